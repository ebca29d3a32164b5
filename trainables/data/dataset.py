"""Dataset directories: load and validate, write atomically.

    instrument-sweep data info DIR          # counts per split and per class

    from trainables.data.dataset import load_dataset
    ds = load_dataset("data/uiowa")
    ds.train_x.shape, ds.n_classes, ds.classes, ds.fingerprint

Format (docs/data.md, "Dataset directories"):
`{prefix}train_data.npy` float (n_train, n_features), `{prefix}train_labels.npy`
int (n_train,), the same for test; optional `classes.json` (names, index = label)
and `metadata.json`. The UIowa release uses prefix "uiowa_", generated datasets
none. Every problem is an `InputError` naming the file; nothing is ever unpickled.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainables.errors import InputError

CLASSES_FILE = "classes.json"
METADATA_FILE = "metadata.json"
PARTS = ("train_data", "train_labels", "test_data", "test_labels")
NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file


@dataclass(frozen=True)
class Dataset:
    """Validated arrays: features float32 C-contiguous (n, n_features), labels int64 in 0..k-1."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]  # name of each label, index = label
    metadata: dict = field(default_factory=dict)
    path: str = ""

    @property
    def n_features(self) -> int:
        return int(self.train_x.shape[1])

    @functools.cached_property
    def fingerprint(self) -> dict:
        """Shape, dtype and a BLAKE2 hash of each array: what a checkpoint records of its data."""
        parts = {"train_x": self.train_x, "train_y": self.train_y, "test_x": self.test_x, "test_y": self.test_y}
        out: dict = {}
        digest = hashlib.blake2b(digest_size=16)
        for name, array in parts.items():
            out[name] = {"shape": list(array.shape), "dtype": str(array.dtype)}
            digest.update(np.ascontiguousarray(array).data)
        out["blake2b"] = digest.hexdigest()
        return out

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def n_train(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.test_x.shape[0])


def class_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows per label 0..n_classes-1 (int64, zeros included)."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)[:n_classes]


def describe(ds: Dataset) -> str:
    """The seed's summary (training samples, test samples, features, classes) plus a per-class table."""
    train_counts = class_counts(ds.train_y, ds.n_classes)
    test_counts = class_counts(ds.test_y, ds.n_classes)
    width = max([len("class"), *map(len, ds.classes)])
    lines = [
        f"dataset:          {ds.path}",
        f"training samples: {ds.n_train}",
        f"test samples:     {ds.n_test}",
        f"features:         {ds.n_features}",
        f"classes:          {ds.n_classes}",
        "",
        f"{'label':>5}  {'class':<{width}}  {'train':>7}  {'test':>7}",
    ]
    for label, name in enumerate(ds.classes):
        lines.append(f"{label:>5}  {name:<{width}}  {train_counts[label]:>7}  {test_counts[label]:>7}")
    return "\n".join(lines)


# -- loading and validation -----------------------------------------------------------------


def find_prefix(directory: Path) -> str:
    """The file prefix of the dataset in `directory` ("" or e.g. "uiowa_")."""
    prefixes = sorted(p.name[: -len("train_data.npy")] for p in directory.glob("*train_data.npy"))
    if not prefixes:
        raise InputError(
            str(directory / "train_data.npy"),
            "missing file: a dataset directory holds [PREFIX]train_data.npy, train_labels.npy, "
            "test_data.npy and test_labels.npy (PREFIX empty or e.g. uiowa_)",
        )
    if len(prefixes) > 1:
        raise InputError(str(directory), f"holds several datasets (prefixes {prefixes}); keep one")
    return prefixes[0]


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Load and validate a dataset directory; float64 (or integer) features become float32.

    Raises `InputError(file, problem)` for anything a training run would trip over.
    """
    directory = Path(path).expanduser()
    if not directory.is_dir():
        what = _missing(directory) if not directory.exists() else "is not a directory"
        raise InputError(str(directory), f"{what}; expected a dataset directory (or 'synthetic')")
    prefix = find_prefix(directory)
    files = {part: directory / f"{prefix}{part}.npy" for part in PARTS}
    arrays = {part: _load_array(file) for part, file in files.items()}

    train_x = _features(arrays["train_data"], files["train_data"])
    test_x = _features(arrays["test_data"], files["test_data"])
    train_y = _labels(arrays["train_labels"], files["train_labels"])
    test_y = _labels(arrays["test_labels"], files["test_labels"])
    for x, y, x_file, y_file in (
        (train_x, train_y, files["train_data"], files["train_labels"]),
        (test_x, test_y, files["test_data"], files["test_labels"]),
    ):
        if len(y) != len(x):
            raise InputError(str(y_file), f"has {len(y)} labels but {x_file.name} has {len(x)} rows")
    if test_x.shape[1] != train_x.shape[1]:
        raise InputError(
            str(files["test_data"]),
            f"has {test_x.shape[1]} features per row but {files['train_data'].name} has {train_x.shape[1]}",
        )
    present = np.unique(train_y)
    if len(present) < 2:
        raise InputError(
            str(files["train_labels"]),
            f"all {len(train_y)} training rows have label {int(present[0])}; a classifier needs at least 2 classes",
        )
    n_classes = int(train_y.max()) + 1
    missing = np.flatnonzero(class_counts(train_y, n_classes) == 0)
    if len(missing):
        raise InputError(
            str(files["train_labels"]),
            f"labels must cover 0..{n_classes - 1}; no training rows for {_some(missing)}",
        )
    outside = np.unique(test_y[test_y >= n_classes])
    if len(outside):
        raise InputError(
            str(files["test_labels"]),
            f"labels {_some(outside)} are not among the training classes 0..{n_classes - 1}",
        )
    classes = _classes(directory / CLASSES_FILE, n_classes)
    metadata = _metadata(directory / METADATA_FILE)
    return Dataset(train_x, train_y, test_x, test_y, classes, metadata, str(directory))


def _missing(path: Path) -> str:
    """Why `path`, which does not resolve to an existing file or directory, is not there."""
    if not path.is_symlink():
        return "does not exist"
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop this way
        return "is a symbolic link loop"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop"
    return f"is a broken symbolic link (to {os.readlink(path)}, which does not exist)"


def _load_array(file: Path) -> np.ndarray:
    if not file.is_file():
        if file.exists():
            raise InputError(str(file), "is not a regular file")
        raise InputError(str(file), _missing(file) if file.is_symlink() else "missing file")
    _check_npy_header(file)
    try:
        array = np.load(file, allow_pickle=False)
    except ValueError as exc:  # pickled or object data, or a truncated file
        text = str(exc)
        if "pickle" in text or "Object arrays" in text:
            raise InputError(str(file), "holds pickled/object data; refusing to unpickle it") from None
        raise InputError(str(file), f"is not a readable .npy array ({text})") from None
    except (OSError, EOFError) as exc:
        raise InputError(str(file), f"is not a readable .npy array ({exc})") from None
    if array.dtype.hasobject:
        raise InputError(str(file), "holds object data; refusing to unpickle it")
    return array


def _check_npy_header(file: Path) -> None:
    """InputError unless `file` starts like a .npy array (np.load would try to unpickle anything else)."""
    try:
        with file.open("rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise InputError(str(file), f"cannot be read ({exc.strerror or exc})") from None
    if head.startswith(NPY_MAGIC):
        return
    if not head:
        raise InputError(str(file), "is empty (0 bytes), not a .npy array")
    if head.startswith(b"PK"):
        raise InputError(str(file), "is an .npz archive, not a single .npy array")
    if head[:1] == b"\x80":
        raise InputError(str(file), "holds pickled data, not a .npy array; refusing to unpickle it")
    text = head.decode("latin-1")
    if all(c.isprintable() or c in "\t\r\n" for c in text):
        raise InputError(str(file), f"is a text file (starts {text[:24]!r}), not a .npy array; "
                                    "save arrays with numpy.save")
    raise InputError(str(file), "is not a .npy array (a .npy file starts with \\x93NUMPY); save arrays with numpy.save")


def _features(array: np.ndarray, file: Path) -> np.ndarray:
    if array.ndim != 2:
        raise InputError(str(file), f"must be 2-D (rows, features), got shape {array.shape}")
    if array.size == 0:
        raise InputError(str(file), f"is empty (shape {array.shape})")
    if array.dtype.kind not in "fiu":
        raise InputError(str(file), f"must hold real numbers, got dtype {array.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.ascontiguousarray(array, dtype=np.float32)
    bad_rows = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if len(bad_rows):
        beyond = " (or values beyond float32 range)" if array.dtype != np.float32 else ""
        raise InputError(
            str(file),
            f"{len(bad_rows)} of {len(x)} rows hold NaN or inf{beyond}; first at row {bad_rows[0]}",
        )
    return x


def _labels(array: np.ndarray, file: Path) -> np.ndarray:
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise InputError(str(file), f"must be 1-D (one label per row), got shape {array.shape}")
    if array.size == 0:
        raise InputError(str(file), "is empty")
    if array.dtype.kind == "f":
        whole = np.isfinite(array) & (array == np.round(array))
        if not whole.all():
            raise InputError(
                str(file), f"labels must be integers; {int((~whole).sum())} are not (e.g. {array[~whole][0]!r})"
            )
    elif array.dtype.kind not in "iu":
        raise InputError(str(file), f"labels must be integers, got dtype {array.dtype}")
    if (array < 0).any():
        raise InputError(
            str(file), f"labels must be >= 0; {int((array < 0).sum())} are negative (e.g. {array[array < 0][0]})"
        )
    return np.ascontiguousarray(array, dtype=np.int64)


def _classes(file: Path, n_classes: int) -> tuple[str, ...]:
    if not file.exists():
        return tuple(f"class_{i}" for i in range(n_classes))
    names = _read_json(file)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError(str(file), "must be a JSON list of class names")
    if len(names) != n_classes:
        raise InputError(str(file), f"names {len(names)} classes but the labels have {n_classes}")
    return tuple(names)


def _metadata(file: Path) -> dict:
    if not file.exists():
        return {}
    metadata = _read_json(file)
    if not isinstance(metadata, dict):
        raise InputError(str(file), "must be a JSON object")
    return metadata


def _read_json(file: Path):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(str(file), f"is not readable JSON ({exc})") from None


def _some(values: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(int(v)) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


# -- writing --------------------------------------------------------------------------------


def write_dataset(
    out_dir: str | os.PathLike,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    classes: tuple[str, ...] | list[str],
    metadata: dict,
    overwrite: bool = False,
) -> Path:
    """Write a dataset directory (no prefix) all at once: it appears complete or not at all.

    Raises FileExistsError when `out_dir` exists and is not empty, unless `overwrite`.
    """
    with staged_dir(out_dir, overwrite=overwrite) as stage:
        for name, array, dtype in (
            ("train_data", train_x, np.float32),
            ("train_labels", train_y, np.int64),
            ("test_data", test_x, np.float32),
            ("test_labels", test_y, np.int64),
        ):
            np.save(stage / f"{name}.npy", np.ascontiguousarray(array, dtype=dtype), allow_pickle=False)
        (stage / CLASSES_FILE).write_text(json.dumps(list(classes), indent=2) + "\n", encoding="utf-8")
        (stage / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return Path(out_dir)


@contextmanager
def staged_dir(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temp dir next to `target`; on success rename it to `target`.

    On any exception (Ctrl-C included) the temp dir is removed and `target` is untouched.
    Raises FileExistsError if `target` is a non-empty directory (or a file), unless `overwrite`.
    """
    target = Path(target).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite:
        _refuse_existing(target)
    stage = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
    try:
        yield stage
        stage.chmod(0o755)  # mkdtemp makes it 0700
        if overwrite and target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
            os.replace(target, old / "dataset")
            os.rename(stage, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            _refuse_existing(target)
            try:
                os.rename(stage, target)  # atomic; fails if another writer got there first
            except OSError as exc:
                raise FileExistsError(f"{target} appeared while writing ({exc.strerror})") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _refuse_existing(target: Path) -> None:
    if target.is_dir() and not any(target.iterdir()):
        return  # an empty directory is replaced by the rename
    if target.exists():
        raise FileExistsError(f"{target} exists and is not an empty directory")
