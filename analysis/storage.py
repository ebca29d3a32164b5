"""Where sweeps are stored: a local directory or a cloud URI (s3://, gs://), Ray Tune style.

    root = resolve_storage("./sweeps")           # absolute path, created, checked writable
    root = resolve_storage("s3://bucket/sweeps?endpoint_override=10.0.0.9:9000&scheme=http")  # or InputError
    write_text(join(root, "seed-1", "sweep.yaml"), text)   # parts go into the path, ahead of the query

A multi-node cluster needs storage every node reaches: a cloud URI or a shared
(NFS) path. A URI may carry pyarrow's options as a query string (`endpoint_override`,
`scheme`, `region`, ...: an S3-compatible server); AWS_ENDPOINT_URL names one too.
Experiment state restored by `resume` is pickled by Ray, so results directories must
be trusted: `resume` only accepts experiments under the root the user names.
"""

from __future__ import annotations

import os
from pathlib import Path

from trainables.errors import InputError, first_line

URI_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs")
STORAGE_ENV = "INSTRUMENT_SWEEP_STORAGE"  # the default root where set (cluster.yaml sets it)
DEFAULT_STORAGE = os.environ.get(STORAGE_ENV, "./sweeps")
SPEC_FILE = "sweep.yaml"  # an experiment's resolved spec, written beside Ray Tune's state
DATASET_FILE = "dataset.json"  # the fingerprint of the data it trains on (shape, dtype, hash)
SETTINGS_FILE = "trial_settings.json"  # what its trials share (each params.json holds what identifies one)
LOCK_FILE = ".instrument-sweep.lock"  # held by the one run/resume working on it (tune_jobs.experiment_lock)
JOB_DIR = "slurm"  # a Slurm job's script, spec and output (tune_jobs.slurm), written before its sweep starts


def is_uri(location: str) -> bool:
    return "://" in location


def resolve_storage(location: str, create: bool = True) -> str:
    """An absolute local directory (created and checked writable) or a cloud URI as given, its
    bucket checked to exist and answer (`check_reachable`)."""
    if is_uri(location):
        scheme = location.split("://", 1)[0].lower()
        if scheme == "file":
            return resolve_storage(location[len("file://"):], create)
        if scheme not in URI_SCHEMES:
            raise InputError("--storage", f"unsupported scheme {scheme}://; use a local path or one of "
                                          + ", ".join(f"{s}://" for s in URI_SCHEMES))
        path, query = _split(location)
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
    """(pyarrow FileSystem, path inside it) for a local path or a URI."""
    import pyarrow.fs

    if is_uri(location):
        return pyarrow.fs.FileSystem.from_uri(location)
    return pyarrow.fs.LocalFileSystem(), location


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


def read_text(location: str) -> str:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as src:
        return src.read().decode()
