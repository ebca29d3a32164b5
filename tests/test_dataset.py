"""Dataset directories: every validation error names its file; loading never unpickles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainables.data.dataset import (
    class_counts,
    describe,
    load_dataset,
    staged_dir,
    write_dataset,
)
from trainables.data.sources import resolve_dataset
from trainables.errors import InputError
from tune_jobs.cli import main


def arrays(n_train: int = 60, n_test: int = 20, n_features: int = 5, n_classes: int = 3) -> dict:
    rng = np.random.default_rng(0)
    return {
        "train_data": rng.normal(size=(n_train, n_features)).astype(np.float32),
        "train_labels": np.arange(n_train) % n_classes,
        "test_data": rng.normal(size=(n_test, n_features)).astype(np.float32),
        "test_labels": np.arange(n_test) % n_classes,
    }


def save(directory: Path, prefix: str = "", **overrides) -> Path:
    """A valid dataset with some arrays replaced (None: file left out)."""
    directory.mkdir(parents=True, exist_ok=True)
    for part, array in {**arrays(), **overrides}.items():
        if array is not None:
            np.save(directory / f"{prefix}{part}.npy", array)
    return directory


def test_loads_a_valid_dataset_and_converts_types(tmp_path):
    base = arrays()
    save(tmp_path, train_data=base["train_data"].astype(np.float64), train_labels=base["train_labels"].astype(np.int32),
         test_labels=base["test_labels"].astype(np.float64).reshape(-1, 1))
    ds = load_dataset(tmp_path)
    assert ds.train_x.dtype == np.float32 and ds.train_x.flags.c_contiguous
    assert ds.train_y.dtype == np.int64 and ds.test_y.dtype == np.int64 and ds.test_y.shape == (20,)
    assert (ds.n_train, ds.n_test, ds.n_features, ds.n_classes) == (60, 20, 5, 3)
    assert ds.classes == ("class_0", "class_1", "class_2") and ds.metadata == {}
    np.testing.assert_array_equal(ds.train_x, base["train_data"])
    np.testing.assert_array_equal(class_counts(ds.train_y, ds.n_classes), [20, 20, 20])


def test_detects_the_uiowa_prefix_and_reads_class_names(tmp_path):
    save(tmp_path, prefix="uiowa_")
    (tmp_path / "classes.json").write_text(json.dumps(["Flute", "Oboe", "Cello"]))
    ds = resolve_dataset(str(tmp_path))
    assert ds.classes == ("Flute", "Oboe", "Cello") and ds.n_train == 60


def test_data_info_prints_counts_per_class(tmp_path, capsys):
    save(tmp_path)
    assert main(["data", "info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for text in ("training samples: 60", "test samples:     20", "features:         5", "classes:          3"):
        assert text in out
    assert out.strip().splitlines()[-1].split() == ["2", "class_2", "20", "6"]
    assert "class_0" in describe(load_dataset(tmp_path))


BAD_CASES = {
    # name: (overrides, file named in the error, words in the problem)
    "missing labels": ({"test_labels": None}, "test_labels.npy", "missing file"),
    "data 1-D": ({"train_data": np.zeros(60, np.float32)}, "train_data.npy", "2-D"),
    "data 3-D": ({"test_data": np.zeros((20, 5, 1), np.float32)}, "test_data.npy", "2-D"),
    "row counts differ": ({"train_labels": np.arange(59) % 3}, "train_labels.npy",
                          "59 labels but train_data.npy has 60"),
    "feature counts differ": ({"test_data": np.zeros((20, 4), np.float32)}, "test_data.npy", "4 features"),
    "labels not integers": ({"train_labels": np.full(60, 0.5)}, "train_labels.npy", "must be integers"),
    "labels strings": ({"train_labels": np.array(["a"] * 60)}, "train_labels.npy", "must be integers"),
    "labels negative": ({"test_labels": np.arange(20) % 3 - 1}, "test_labels.npy", "are negative"),
    "labels with a gap": ({"train_labels": np.arange(60) % 3 * 2}, "train_labels.npy", "no training rows for 1, 3"),
    "test label unseen": ({"test_labels": np.arange(20) % 4}, "test_labels.npy", "labels 3 are not among"),
    "nan rows": (
        {"train_data": np.where(np.arange(60)[:, None] % 20 == 7, np.nan, 1.0).repeat(5, 1).astype(np.float32)},
        "train_data.npy",
        "3 of 60 rows hold NaN or inf; first at row 7",
    ),
    "inf": ({"test_data": np.full((20, 5), np.inf)}, "test_data.npy", "20 of 20 rows"),
    "float64 beyond float32": ({"test_data": np.full((20, 5), 1e300)}, "test_data.npy", "beyond float32 range"),
    "empty data": ({"test_data": np.zeros((0, 5), np.float32), "test_labels": np.zeros(0, np.int64)},
                   "test_data.npy", "is empty"),
    "empty labels": ({"train_labels": np.zeros(0, np.int64)}, "train_labels.npy", "is empty"),
    "complex data": ({"train_data": np.zeros((60, 5), np.complex64)}, "train_data.npy", "real numbers"),
    "object array": ({"train_data": np.array([[1.0, None]] * 60, dtype=object)}, "train_data.npy",
                     "refusing to unpickle"),
    "one class": ({"train_labels": np.zeros(60, np.int64), "test_labels": np.zeros(20, np.int64)},
                  "train_labels.npy", "all 60 training rows have label 0; a classifier needs at least 2 classes"),
    "one class, not label 0": ({"train_labels": np.full(60, 2)}, "train_labels.npy", "have label 2; a classifier"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_each_validation_error_names_the_file(tmp_path, case):
    overrides, file, words = BAD_CASES[case]
    save(tmp_path, **overrides)
    with pytest.raises(InputError) as err:
        load_dataset(tmp_path)
    assert err.value.where == str(tmp_path / file)
    assert words in err.value.problem


def test_never_unpickles(tmp_path):
    """A pickle that would create a file when loaded is refused, and the file never appears."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    save(tmp_path / "ds", train_labels=np.array([Payload()] * 60, dtype=object))
    with pytest.raises(InputError, match="refusing to unpickle"):
        load_dataset(tmp_path / "ds")
    assert not marker.exists()


def test_other_unreadable_inputs(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        load_dataset(tmp_path / "file")
    with pytest.raises(InputError, match="missing file") as err:
        load_dataset(tmp_path)  # no dataset at all
    assert err.value.where == str(tmp_path / "train_data.npy")

    save(tmp_path / "two")
    save(tmp_path / "two", prefix="uiowa_")
    with pytest.raises(InputError, match="several datasets"):
        load_dataset(tmp_path / "two")

    save(tmp_path / "trunc")
    data = (tmp_path / "trunc" / "train_data.npy").read_bytes()
    (tmp_path / "trunc" / "train_data.npy").write_bytes(data[:-40])
    with pytest.raises(InputError, match="not a readable .npy"):
        load_dataset(tmp_path / "trunc")

    save(tmp_path / "garbage")
    (tmp_path / "garbage" / "test_data.npy").write_bytes(b"not an array at all" * 10)
    with pytest.raises(InputError) as err:
        load_dataset(tmp_path / "garbage")
    assert err.value.where.endswith("test_data.npy")

    save(tmp_path / "names")
    (tmp_path / "names" / "classes.json").write_text('["a", "b"]')
    with pytest.raises(InputError, match="names 2 classes but the labels have 3"):
        load_dataset(tmp_path / "names")
    (tmp_path / "names" / "classes.json").write_text("{not json")
    with pytest.raises(InputError, match="not readable JSON"):
        load_dataset(tmp_path / "names")


def test_links_and_non_npy_files_are_named_for_what_they_are(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(InputError, match="is a symbolic link loop"):
        load_dataset(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    with pytest.raises(InputError, match=r"is a broken symbolic link \(to .*gone, which does not exist\)"):
        load_dataset(tmp_path / "dangling")

    for name, content, words in (
        ("text", b"1.0,2.0,3.0\n4.0,5.0,6.0\n", "is a text file (starts '1.0,2.0"),
        ("empty", b"", "is empty (0 bytes)"),
        ("pickle", b"\x80\x04\x95" + bytes(20), "holds pickled data"),
        ("binary", bytes(range(256)), "is not a .npy array"),
    ):
        save(tmp_path / name)
        (tmp_path / name / "train_data.npy").write_bytes(content)
        with pytest.raises(InputError) as err:
            load_dataset(tmp_path / name)
        assert err.value.where == str(tmp_path / name / "train_data.npy")
        assert words in err.value.problem, (name, err.value.problem)

    save(tmp_path / "npz")
    np.savez(tmp_path / "npz" / "x.npz", a=np.zeros(3))
    (tmp_path / "npz" / "x.npz").replace(tmp_path / "npz" / "test_data.npy")
    with pytest.raises(InputError, match="is an .npz archive"):
        load_dataset(tmp_path / "npz")

    save(tmp_path / "linked")
    (tmp_path / "linked" / "test_labels.npy").unlink()
    (tmp_path / "linked" / "test_labels.npy").symlink_to("test_labels.npy")
    with pytest.raises(InputError, match="symbolic link loop") as err:
        load_dataset(tmp_path / "linked")
    assert err.value.where.endswith("test_labels.npy")


def test_cli_exits_2_naming_the_file(tmp_path, capsys):
    save(tmp_path, test_labels=np.arange(20) % 5)
    assert main(["data", "info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'test_labels.npy'}: ")


def test_write_dataset_round_trip_and_refuses_to_clobber(tmp_path):
    a = arrays()
    out = tmp_path / "out"
    write_dataset(out, a["train_data"], a["train_labels"], a["test_data"], a["test_labels"], ["x", "y", "z"], {"k": 1})
    ds = load_dataset(out)
    assert ds.classes == ("x", "y", "z") and ds.metadata == {"k": 1}
    np.testing.assert_array_equal(ds.test_x, a["test_data"])
    with pytest.raises(FileExistsError):
        write_dataset(out, a["train_data"], a["train_labels"], a["test_data"], a["test_labels"], ["x", "y", "z"], {})
    write_dataset(out, a["train_data"], a["train_labels"], a["test_data"], a["test_labels"], ["p", "q", "r"], {},
                  overwrite=True)
    assert load_dataset(out).classes == ("p", "q", "r")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp dirs left behind


def test_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt), staged_dir(target) as stage:
        (stage / "train_data.npy").write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
