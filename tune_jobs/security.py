"""A local Ray kept to this machine: a private token file and listeners on loopback only.

    private_token_file(create=True)    # before Ray starts: the token file is 0600 (made so, or created so)
    with ray_private.ray_on_loopback():   # a local Ray started inside listens on 127.0.0.1 only
        ray.init(...)
    dashboard_login_hint()             # how to get past the dashboard's token dialog

Ray 2.60 writes ~/.ray/auth_token with the default umask (-rw-r--r--), and starts a
local Ray on the machine's address: its GCS, raylet, object manager, workers and
agents listen on all interfaces. Every entry point that starts a local Ray
(tune_jobs.cluster.connect) calls these first; nothing happens at import time.
"""

from __future__ import annotations

import os
import secrets
import stat
import sys
from pathlib import Path

from trainables.errors import InputError

PRIVATE_MODE = 0o600
def token_file() -> Path | None:
    """The file Ray reads its token from; None when RAY_AUTH_TOKEN holds the token itself."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
    return Path.home() / ".ray" / "auth_token"


def shown(path: Path) -> str:
    """`path` with the home directory written as ~."""
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home):] if home != "/" and (text == home or text.startswith(home + "/")) else text


def private_token_file(create: bool = False) -> Path | None:
    """Make Ray's token file readable by its owner only, before Ray reads it; return its path.

    A file with group or other permission bits is set to 0600 with a one-line notice.
    With `create` (a local Ray is about to start with token auth) a missing default
    file is written here, 0600 from the start, instead of by Ray (0644). A file that
    cannot be made private stops the run: InputError names it and says why.
    """
    path = token_file()
    if path is None or os.name == "nt":
        return path
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        if create and will_create_token() and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
            write_new_token(path)
        return path
    except OSError as exc:
        raise InputError(shown(path), f"cannot read Ray's token file ({exc.strerror or exc})") from None
    if mode & 0o077 and path.is_file():
        try:
            os.chmod(path, PRIVATE_MODE)
        except OSError as exc:
            raise InputError(shown(path), f"Ray's token is open to group/others ({mode:04o}) and cannot be "
                                          f"made 0600 ({exc.strerror or exc}); run `chmod 600 {shown(path)}` as "
                                          "its owner, or give the token in RAY_AUTH_TOKEN") from None
        print(f"token: {shown(path)} was open to group/others ({mode:04o}); made it 0600 (whoever reads it "
              "can run code in your Ray)", file=sys.stderr, flush=True)
    return path


def will_create_token() -> bool:
    """Whether a new local Ray would create a token: token auth on (Ray's default) or unset, none given,
    and no RAY_ADDRESS that makes ray.init() join an existing cluster instead."""
    mode = os.environ.get("RAY_AUTH_MODE", "token").lower()
    return mode == "token" and not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_ADDRESS")


def write_new_token(path: Path) -> None:
    """A new token as Ray makes one (256 random bits, hex), in a file created 0600."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    except FileExistsError:  # another run made it meanwhile: keep theirs, private
        private_token_file()
        return
    except OSError as exc:
        raise InputError(shown(path), f"cannot create Ray's token file ({exc.strerror or exc}); make "
                                      f"{shown(path.parent)} writable or give a token in RAY_AUTH_TOKEN") from None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))


def dashboard_login_hint() -> str:
    """How to get past the dashboard's "Authentication Token Required" dialog; "" without token auth."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return ""
    path = token_file()
    source = "RAY_AUTH_TOKEN" if path is None else shown(path)
    return (f"the dashboard asks for Ray's token once: paste what `ray get-auth-token` prints (it reads "
            f"{source}); the browser keeps it in a cookie")
