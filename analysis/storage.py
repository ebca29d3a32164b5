"""Where sweeps are stored: a local directory or a cloud URI (s3://, gs://), Ray Tune style.

    root = resolve_storage("./sweeps")           # absolute path, created, checked writable
    root = resolve_storage("s3://bucket/sweeps?endpoint_override=10.0.0.9:9000&scheme=http")  # or InputError
    write_text(join(root, "seed-1", "sweep.yaml"), text)   # parts go into the path, ahead of the query

A multi-node cluster needs storage every node reaches: a cloud URI or a shared
(NFS) path. A URI may carry pyarrow's options as a query string (`endpoint_override`,
`scheme`, `region`, ...: an S3-compatible server); AWS_ENDPOINT_URL names one too.
Experiment state restored by `resume` is pickled by Ray, so results directories must
be trusted: `resume` only accepts experiments under the root the user names.

Credentials in an s3:// URI (`s3://KEY:SECRET@bucket/...`, or the query's access_key, secret_key,
session_token) are taken out where the URI comes in (`resolve_storage`, `take_credentials`): the
location returned, which everything prints and stores, has none, and this process's filesystems of
that store (`filesystem`: its bucket, endpoint and options) are built with them. Another scheme's
URI with credentials is refused: its filesystem would write them into Tune's pickled state.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from trainables.errors import InputError, first_line

URI_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs")
STORAGE_ENV = "INSTRUMENT_SWEEP_STORAGE"  # the default root where set (cluster.yaml sets it)
DEFAULT_STORAGE = os.environ.get(STORAGE_ENV, "./sweeps")
SPEC_FILE = "sweep.yaml"  # an experiment's resolved spec, written beside Ray Tune's state
DATASET_FILE = "dataset.json"  # the fingerprint of the data it trains on (shape, dtype, hash)
SETTINGS_FILE = "trial_settings.json"  # what its trials share (each params.json holds what identifies one)
LOCK_FILE = ".instrument-sweep.lock"  # held by the one run/resume working on it (tune_jobs.experiment_lock)
JOB_DIR = "slurm"  # a Slurm job's script, spec and output (tune_jobs.slurm), written before its sweep starts
OWN_FILES = (SPEC_FILE, DATASET_FILE, SETTINGS_FILE, LOCK_FILE, JOB_DIR)  # what a sweep writes before Tune does
# What a URI's query may hold that is a secret: S3FileSystem's own credentials (taken from an s3:// URI),
# Azure's client secret and a SAS token's signature (refused, as any other scheme's).
S3_CREDENTIAL_PARAMS = ("access_key", "secret_key", "session_token")
SECRET_PARAMS = (*S3_CREDENTIAL_PARAMS, "client_secret", "sig")
CREDENTIAL_SOURCES = ("the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), a profile "
                      "(AWS_PROFILE) or an instance role")  # where S3 credentials are better given than in a URI
CREDENTIALS_ADVICE = f"give them through {CREDENTIAL_SOURCES}"


@dataclass(frozen=True)
class Credentials:
    """S3 credentials an s3:// URI carried: S3FileSystem's keywords of the same names."""

    access_key: str
    secret_key: str
    session_token: str = ""

    def __repr__(self) -> str:  # a traceback or a log shows which key, never the secret
        return f"Credentials(access_key={self.access_key!r}, secret_key=<hidden>)"


# The credentials this process was given in URIs, by store (`_store`): what `filesystem` builds with.
_GIVEN: dict[str, Credentials] = {}


def is_uri(location: str) -> bool:
    return "://" in location


def resolve_storage(location: str, create: bool = True) -> str:
    """An absolute local directory (created and checked writable) or a cloud URI as given, without
    its credentials (`take_credentials`), its bucket checked to exist and answer (`check_reachable`)."""
    if is_uri(location):
        scheme = location.split("://", 1)[0].lower()
        if scheme == "file":
            return resolve_storage(location[len("file://"):], create)
        if scheme not in URI_SCHEMES:
            raise InputError("--storage", f"unsupported scheme {scheme}://; use a local path or one of "
                                          + ", ".join(f"{s}://" for s in URI_SCHEMES))
        path, query = _split(take_credentials(location))
        location = path.rstrip("/") + query
        check_reachable(location)
        return location
    path = Path(location).expanduser().absolute()
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise InputError("--storage", f"{parent} is a file; storage must be a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise InputError("--storage", f"{parent} is not writable")
            break
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError("--storage", f"cannot create {path}: {exc.strerror}") from None
    return str(path)


def _split(uri: str) -> tuple[str, str]:
    """(scheme://bucket/path, "?query" or "") of a URI."""
    path, mark, query = uri.partition("?")
    return path, mark + query


def split_credentials(location: str, field: str = "--storage") -> tuple[str, Credentials | None]:
    """(`location` without credentials, the S3 credentials its URI carried or None). An s3:// URI's
    user info KEY:SECRET (percent-decoded, as pyarrow reads it; a secret's '/' is taken as it is, too)
    and its query's S3_CREDENTIAL_PARAMS are taken out; another scheme's URI with a password or a
    SECRET_PARAMS parameter is InputError(field, ...), its credentials left out of the message."""
    if not is_uri(location):
        return location, None
    scheme, _, rest = location.partition("://")
    path, query = _split(rest)
    userinfo, at, after = path.partition("@")  # keys and secrets hold no "@"; a key's path may
    if "/" in userinfo.partition(":")[0]:  # an '@' in the path, not after user info (a secret may hold '/', a key not)
        userinfo, at, after = "", "", path
    host, slash, key = after.partition("/")
    pairs = [pair.partition("=") for pair in query[1:].split("&") if pair]
    taken = {name: unquote(value) for name, _, value in pairs if name in SECRET_PARAMS}
    kept = "&".join(f"{name}{eq}{value}" for name, eq, value in pairs if name not in SECRET_PARAMS)
    user, _, password = userinfo.partition(":")
    if scheme.lower() != "s3":  # its user info may name something else (a user, Azure's container)
        if password or taken:
            named = f"{user}@{host}" if at else host
            raise InputError(field, f"{scheme}://{named}{slash}{key}: credentials in {scheme}:// URIs are not "
                                    "taken (Tune would store them with the experiment); give them through the "
                                    "environment or the platform's own login")
        return location, None
    clean = f"{scheme}://{host}{slash}{key}" + (f"?{kept}" if kept else "")
    if not (at or taken):
        return location, None
    access_key, secret_key = taken.get("access_key", unquote(user)), taken.get("secret_key", unquote(password))
    if not (access_key and secret_key) or set(taken) - set(S3_CREDENTIAL_PARAMS):
        raise InputError(field, f"{clean}: an s3:// URI's credentials are KEY:SECRET@ before the bucket (or its "
                                "access_key and secret_key, and session_token where needed); better, "
                                + CREDENTIALS_ADVICE)
    return clean, Credentials(access_key, secret_key, taken.get("session_token", ""))


def take_credentials(location: str, field: str = "--storage") -> str:
    """`location` without credentials (`split_credentials`); those it carried are what this process's
    filesystems of its store are built with from now on (`filesystem`)."""
    clean, credentials = split_credentials(location, field)
    if credentials is not None:
        _GIVEN[_store(clean)] = credentials
    return clean


def given_credentials(location: str) -> bool:
    """Whether this process was given credentials in a URI for `location`'s store."""
    return is_uri(location) and _store(location) in _GIVEN


def credentials_hint(location: str) -> str:
    """What a command repeated on `location` (resume, analyze) needs to be told: where the credentials
    its URI carried went ("" where it carried none)."""
    if not given_credentials(location):
        return ""
    return (" (its URI's credentials are left out: give them again as KEY:SECRET@ before the bucket, or through "
            f"{CREDENTIAL_SOURCES})")


def redact(text: str) -> str:
    """`text` with the secrets of any URI in it replaced by ***: a user info's password and the values
    of SECRET_PARAMS (the last guard of what the command line prints)."""
    text = re.sub(r"(\b[a-zA-Z][\w+.-]*://[^/\s:@?#]*:)[^\s@?#'\"`]*@", r"\1***@", text)
    return re.sub(r"([?&](?:" + "|".join(SECRET_PARAMS) + r")=)[^&\s'\"`]*", r"\1***", text)


def _store(uri: str) -> str:
    """A URI's store: scheme://bucket?query (its endpoint and options), the path left out."""
    path, query = _split(uri)
    scheme, _, rest = path.partition("://")
    return f"{scheme.lower()}://{rest.split('/', 1)[0]}{query}"


def join(location: str, *parts: str) -> str:
    """`location`/`parts`; a URI's query string stays at its end."""
    if is_uri(location):
        path, query = _split(location)
        return "/".join([path.rstrip("/"), *parts]) + query
    return str(Path(location, *parts))


def basename(location: str) -> str:
    """The last part of a path or of a URI's path (an experiment's name)."""
    return (_split(location)[0] if is_uri(location) else location).rstrip("/").rsplit("/", 1)[-1]


def parent(location: str) -> str:
    """The folder (or URI, its query kept) that holds `location`."""
    if is_uri(location):
        path, query = _split(location)
        return path.rstrip("/").rsplit("/", 1)[0] + query
    return str(Path(location).parent)


def is_under(root: str, location: str) -> bool:
    """Whether `location` lies inside `root` (URIs: the same scheme, bucket and query)."""
    if is_uri(root) != is_uri(location):
        return False
    if is_uri(root):
        (root_path, root_query), (path, query) = _split(root), _split(location)
        return query == root_query and path.startswith(root_path.rstrip("/") + "/")
    return Path(root).resolve() in Path(location).resolve().parents


def check_reachable(uri: str, field: str = "--storage") -> None:
    """InputError(field, ...) unless the URI's bucket exists and its endpoint answers (one request; an
    endpoint that does not answer takes the client's retries, about 6 s)."""
    import pyarrow.fs

    try:
        fs, path = filesystem(uri)
    except (ValueError, OSError) as exc:  # pyarrow.ArrowInvalid is a ValueError: a malformed URI
        raise InputError(field, f"{uri} is not a storage URI pyarrow can open: {first_line(exc)}") from None
    bucket = path.split("/", 1)[0]
    try:
        found = fs.get_file_info(bucket).type != pyarrow.fs.FileType.NotFound
    except OSError as exc:
        raise InputError(field, f"cannot reach {uri}: {first_line(exc)}") from None
    if not found:
        raise InputError(field, f"bucket {bucket!r} does not exist at {endpoint(uri)}; create it "
                                "first, or check the name")


def endpoint(uri: str) -> str:
    """Where a URI's requests go: its endpoint_override, else AWS_ENDPOINT_URL (s3), else its
    scheme's own service."""
    from urllib.parse import parse_qs

    scheme = uri.split("://", 1)[0].lower()
    given = parse_qs(_split(uri)[1][1:]).get("endpoint_override", [""])[0]
    return given or (os.environ.get("AWS_ENDPOINT_URL", "") if scheme == "s3" else "") or f"{scheme}://"


def filesystem(location: str):
    """(pyarrow FileSystem, path inside it) for a local path or a URI: pyarrow's for the URI without
    credentials, built with those given for its store (in it or before: `take_credentials`).

    This is how every filesystem of a storage URI is built (analysis, the Tuner, probes of each
    node). Such a filesystem pickles with its credentials: what hands it to Ray wraps it first
    (tune_jobs.ray_private.shipped_to_workers), so they go only to Ray's workers, never into what
    Tune stores."""
    import pyarrow.fs

    if not is_uri(location):
        return pyarrow.fs.LocalFileSystem(), location
    location = take_credentials(location)
    fs, path = pyarrow.fs.FileSystem.from_uri(location)
    given = _GIVEN.get(_store(location))
    if given is None:
        return fs, path
    return pyarrow.fs.S3FileSystem(**{**s3_options(fs), "access_key": given.access_key, "secret_key": given.secret_key,
                                      "session_token": given.session_token or None}), path


def s3_options(fs) -> dict:
    """An S3FileSystem's keywords (endpoint, region, ..., its credentials), as pyarrow pickles it."""
    import pyarrow.fs

    _, (options,) = pyarrow.fs.S3FileSystem.__reduce__(fs)
    return options


def exists(location: str) -> bool:
    import pyarrow.fs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def started(location: str) -> bool:
    """Whether an experiment is at `location`: anything but the JOB_DIR that a Slurm submission prepares
    and the LOCK_FILE of a command that took it and died before writing anything."""
    if is_uri(location):
        return exists(location)
    path = Path(location)
    if not path.is_dir():
        return path.exists()
    return any(entry.name not in (JOB_DIR, LOCK_FILE) for entry in path.iterdir())


def write_text(location: str, text: str) -> None:
    """Write a small file atomically where the filesystem allows (local: temp file + rename)."""
    if not is_uri(location):
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        return
    fs, path = filesystem(location)
    with fs.open_output_stream(path) as out:
        out.write(text.encode())


def entries(location: str) -> dict[str, int | None]:
    """The names in the folder at `location`, each with its size in bytes (None: a folder); {} where there is
    no such folder."""
    import pyarrow.fs

    fs, path = filesystem(location)
    return {info.base_name: None if info.type == pyarrow.fs.FileType.Directory else info.size
            for info in fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))}


def remove(location: str, names: list[str]) -> None:
    """Delete the entries `names` (files, or folders whole) of the folder at `location`."""
    import pyarrow.fs

    fs, path = filesystem(location)
    for info in fs.get_file_info([f"{path}/{name}" for name in names]):
        if info.type == pyarrow.fs.FileType.Directory:
            fs.delete_dir(info.path)
        elif info.type != pyarrow.fs.FileType.NotFound:
            fs.delete_file(info.path)


def read_text(location: str) -> str:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as src:
        return src.read().decode()
