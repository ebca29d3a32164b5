"""Bad input of every kind (spec, data, paths, cluster addresses): exit code 2 before any Ray
starts, a message that names the field or file and what is allowed, and nothing half-written."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import blob_dataset, write_dataset_dir
from processes import free_port
from tune_jobs.cli import main
from tune_jobs.spec import load_spec

SMOKE = ["run", "--preset", "smoke"]


def broken_dataset(root: Path, name: str, damage) -> str:
    """The blobs dataset with one file damaged by `damage(directory)`."""
    directory = Path(write_dataset_dir(root / name, blob_dataset()))
    damage(directory)
    return str(directory)


def nan_rows(d: Path):
    x = np.load(d / "train_data.npy")
    x[[3, 7], 0] = np.nan
    np.save(d / "train_data.npy", x)


def object_array(d: Path):
    np.save(d / "test_labels.npy", np.array([{"a": 1}] * 300, dtype=object))


def fewer_labels(d: Path):
    np.save(d / "train_labels.npy", np.load(d / "train_labels.npy")[:-5])


def other_features(d: Path):
    np.save(d / "test_data.npy", np.load(d / "test_data.npy")[:, :5])


def unseen_test_label(d: Path):
    y = np.load(d / "test_labels.npy")
    y[0] = 9
    np.save(d / "test_labels.npy", y)


def float_labels(d: Path):
    np.save(d / "train_labels.npy", np.load(d / "train_labels.npy").astype(np.float32) + 0.5)


def one_d_data(d: Path):
    np.save(d / "train_data.npy", np.load(d / "train_data.npy")[:, 0])


def one_class(d: Path):
    for part in ("train_labels", "test_labels"):
        np.save(d / f"{part}.npy", np.zeros_like(np.load(d / f"{part}.npy")))


def text_as_npy(d: Path):
    (d / "train_data.npy").write_text("0.1,0.2,0.3\n0.4,0.5,0.6\n")


def lonely_class(d: Path):
    """Class 3 keeps a single training row: nothing of it is left to validate on."""
    y = np.load(d / "train_labels.npy")
    y[y == 3] = 2
    y[0] = 3
    np.save(d / "train_labels.npy", y)


# (case id, argv after the command, text the error must contain). DATA / STORE / TMP are filled in.
CASES = [
    # spec mistakes
    ("unknown-top-key", [*SMOKE, "--set", "epochz=3"], "epochz: unknown key"),
    ("typo-stop-key", [*SMOKE, "--set", "stop.treshold=0.9"], "stop.treshold: unknown key; did you mean 'threshold'"),
    ("typo-train-key", [*SMOKE, "--set", "train.lr_rate=0.1"], "train.lr_rate: unknown key"),
    ("typo-view-axis", [*SMOKE, "--set", "views.lr.batch=64"], "views.lr.batch: unknown key"),
    ("lr-not-a-number", [*SMOKE, "--set", "views.lr.lr=[fast]"], "views.lr.lr: must be a number"),
    ("lr-zero", [*SMOKE, "--set", "views.lr.lr=[0]"], "views.lr.lr: learning rates must be finite numbers > 0"),
    ("lr-negative", [*SMOKE, "--set", "views.lr.lr=-0.1"], "views.lr.lr: learning rates must be"),
    ("batch-zero", [*SMOKE, "--set", "views.lr.batch_size=0"], "views.lr.batch_size: batch sizes must be integers >= 1"),
    ("batch-float", [*SMOKE, "--set", "views.lr.batch_size=12.5"], "views.lr.batch_size: batch sizes must be integers"),
    ("threshold-above-1", [*SMOKE, "--set", "stop.threshold=1.5"], "stop.threshold: must be in (0, 1]"),
    ("threshold-zero", [*SMOKE, "--set", "stop.threshold=0"], "stop.threshold: must be in (0, 1]"),
    ("patience-zero", [*SMOKE, "--set", "stop.patience=0"], "stop.patience: must be an integer >= 1"),
    ("patience-over-max", [*SMOKE, "--set", "stop.patience=10"], "stop.patience: must be <= max_epochs"),
    ("max-epochs-negative", [*SMOKE, "--set", "stop.max_epochs=-1"], "stop.max_epochs: must be an integer >= 1"),
    ("empty-grid", [*SMOKE, "--set", "views.lr.lr=[]"], "views.lr.lr: is an empty list"),
    ("no-views", [*SMOKE, "--set", "views={}"], "views: must map view names to grids"),
    ("repeats-zero", [*SMOKE, "--set", "repeats=0"], "repeats: must be an integer >= 1"),
    ("unknown-loader", [*SMOKE, "--set", "train.loader=turbo"], "train.loader: must be one of fast, dataloader"),
    ("val-fraction-one", [*SMOKE, "--set", "train.val_fraction=1"], "train.val_fraction: must be in (0, 1)"),
    ("cpus-zero", [*SMOKE, "--set", "resources.cpus_per_trial=0"], "resources.cpus_per_trial: must be a number > 0"),
    ("gpus-word", [*SMOKE, "--set", "resources.gpus_per_trial=many"], "resources.gpus_per_trial: must be 'auto', 0 or 1"),
    ("gpus-half", [*SMOKE, "--set", "resources.gpus_per_trial=0.5"],
     "resources.gpus_per_trial: must be 'auto', 0 or 1 (a trial's energy is its one whole GPU's"),
    ("gpus-two", [*SMOKE, "--set", "resources.gpus_per_trial=2"], "resources.gpus_per_trial: must be 'auto', 0 or 1"),
    ("checkpoint-every-negative", [*SMOKE, "--set", "resources.checkpoint_every_s=-1"],
     "resources.checkpoint_every_s: must be a number of seconds >= 0, got -1"),
    ("report-every-word", [*SMOKE, "--set", "resources.report_every_s=often"],
     "resources.report_every_s: must be a number, got 'often'"),
    ("race-unknown", [*SMOKE, "--set", "race=speed"], "race: must be one of time, energy; got 'speed'"),
    ("race-fixed-epochs", ["run", "--preset", "seed-fixed", "--race", "time"], "race: needs a target to race to"),
    ("set-without-value", [*SMOKE, "--set", "repeats"], "--set: expects KEY=VALUE"),
    ("unknown-preset", ["run", "--preset", "sead"], "preset: unknown preset 'sead'; presets: seed"),
    ("spec-file-missing", ["run", "TMP/nope.yaml"], "nope.yaml: no such sweep file"),
    ("spec-not-yaml", ["run", "TMP/bad.yaml"], "bad.yaml: is not valid YAML"),
    ("spec-not-mapping", ["run", "TMP/list.yaml"], "list.yaml: must be a YAML mapping"),
    ("batch-over-split", ["run", "--data", "DATA", "--storage", "STORE"], "views.batch_size.batch_size: 2048 is larger than the training split"),
    # data mistakes
    ("data-dir-missing", [*SMOKE, "--data", "TMP/no-such-dataset"], "no-such-dataset"),
    ("data-file-missing", [*SMOKE, "--data", "BROKEN:missing"], "test_labels.npy: missing file"),
    ("data-nan-rows", [*SMOKE, "--data", "BROKEN:nan"], "train_data.npy"),
    ("data-pickled", [*SMOKE, "--data", "BROKEN:pickled"], "test_labels.npy"),
    ("data-row-mismatch", [*SMOKE, "--data", "BROKEN:fewer"], "train_labels.npy"),
    ("data-feature-mismatch", [*SMOKE, "--data", "BROKEN:features"], "test_data.npy"),
    ("data-unseen-test-label", [*SMOKE, "--data", "BROKEN:unseen"], "test_labels.npy"),
    ("data-float-labels", [*SMOKE, "--data", "BROKEN:float"], "train_labels.npy"),
    ("data-1d", [*SMOKE, "--data", "BROKEN:1d"], "train_data.npy: must be 2-D"),
    ("data-one-class", [*SMOKE, "--data", "BROKEN:oneclass"], "train_labels.npy: all 1200 training rows have "
                                                                "label 0; a classifier needs at least 2 classes"),
    ("data-symlink-loop", [*SMOKE, "--data", "TMP/loop"], "loop: is a symbolic link loop"),
    ("data-text-as-npy", [*SMOKE, "--data", "BROKEN:text"], "train_data.npy: is a text file (starts '0.1,0.2"),
    ("val-fraction-too-small", [*SMOKE, "--data", "DATA", "--set", "stop.threshold=0.98",
                                "--set", "train.val_fraction=0.0001"],
     "train.val_fraction: 0.0001 leaves 4 validation rows of 1200; the target 0.98 needs at least 50"),
    ("val-class-without-rows", [*SMOKE, "--data", "BROKEN:lonely"],
     "train.val_fraction: 0.2 leaves no validation rows for class(es) 3 (1 training row(s))"),
    # paths
    ("storage-is-a-file", [*SMOKE, "--data", "DATA", "--storage", "TMP/afile"], "--storage: "),
    ("storage-bad-scheme", [*SMOKE, "--data", "DATA", "--storage", "ftp://host/x"], "--storage: unsupported scheme ftp://"),
    ("name-with-slash", [*SMOKE, "--data", "DATA", "--storage", "STORE", "--name", "a/b"], "--name: must be a plain name"),
    ("resume-unknown", ["resume", "ghost", "--storage", "STORE"], "experiment: "),
    ("analyze-not-experiment", ["analyze", "TMP"], "PATH: "),
    ("analyze-spec-not-yaml", ["analyze", "TMP/sweeps/badspec"], "badspec/sweep.yaml: is not valid YAML (line 3: expected"),
    ("resume-spec-not-yaml", ["resume", "badspec", "--storage", "TMP/sweeps"], "sweep.yaml: is not valid YAML"),
    ("analyze-no-trials-yet", ["analyze", "TMP/sweeps/speconly"], "speconly has no trial results yet"),
    ("resume-results-without-state", ["resume", "unsaved", "--storage", "TMP/sweeps"],
     "unsaved holds no state of Tune's to resume from, yet holds trial-001-lr0.1-bs32-s0-x: left as it is"),
    # cluster addresses
    ("address-unreachable", [*SMOKE, "--data", "DATA", "--storage", "STORE", "--address", "127.0.0.1:PORT"],
     "--address: cannot reach 127.0.0.1"),
    ("address-http-for-run", [*SMOKE, "--data", "DATA", "--storage", "STORE", "--address", "http://127.0.0.1:8265"],
     "--address: unsupported scheme http://"),
    ("address-no-port", [*SMOKE, "--data", "DATA", "--storage", "STORE", "--address", "somehost"],
     "--address: 'somehost' is not an address"),
    ("submit-ray-scheme", ["submit", "smoke", "--address", "ray://127.0.0.1:10001"], "--address: unsupported scheme ray://"),
    ("submit-unreachable", ["submit", "smoke", "--address", "http://127.0.0.1:PORT"], "--address: cannot reach"),
]

DAMAGE = {"missing": lambda d: (d / "test_labels.npy").unlink(), "nan": nan_rows, "pickled": object_array,
          "fewer": fewer_labels, "features": other_features, "unseen": unseen_test_label,
          "float": float_labels, "1d": one_d_data, "oneclass": one_class, "text": text_as_npy,
          "lonely": lonely_class}


@pytest.fixture(scope="module")
def places(tmp_path_factory, blob_dataset_dir):
    tmp = tmp_path_factory.mktemp("bad-input")
    (tmp / "bad.yaml").write_text("views: {lr: [0.1\n")
    (tmp / "list.yaml").write_text("- 1\n- 2\n")
    (tmp / "afile").write_text("not a directory")
    (tmp / "loop").symlink_to(tmp / "loop")
    for name, spec_text in (("badspec", "name: x\nviews: {lr: [0.1\n"),
                            ("speconly", yaml.safe_dump(load_spec("smoke").to_dict()))):
        (tmp / "sweeps" / name).mkdir(parents=True)
        (tmp / "sweeps" / name / "sweep.yaml").write_text(spec_text)
    # Tune's first files and a trial's checkpoint and results, but no state of Tune's (its upload failed)
    unsaved = tmp / "sweeps" / "unsaved"
    (unsaved / "trial-001-lr0.1-bs32-s0-x" / "checkpoint_000000").mkdir(parents=True)
    (unsaved / "trial-001-lr0.1-bs32-s0-x" / "result.json").write_text('{"epoch": 1}\n')
    (unsaved / "tuner.pkl").write_bytes(b"")
    (unsaved / "sweep.yaml").write_text(yaml.safe_dump({**load_spec("smoke").to_dict(), "data": blob_dataset_dir}))
    broken = {key: broken_dataset(tmp, key, damage) for key, damage in DAMAGE.items()}
    return {"TMP": str(tmp), "DATA": blob_dataset_dir, "PORT": str(free_port()), "broken": broken}


def fill(argv: list[str], places: dict, store: Path) -> list[str]:
    out = []
    for arg in argv:
        if arg.startswith("BROKEN:"):
            arg = places["broken"][arg.split(":", 1)[1]]
        for key in ("TMP", "DATA", "PORT"):
            arg = arg.replace(key, places[key]) if key in arg and not arg.startswith("--") else arg
        out.append(arg.replace("STORE", str(store)))
    return out


def test_the_table_is_broad():
    assert len(CASES) >= 50
    assert len({case for case, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("case, argv, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_naming_the_problem_and_writes_nothing(case, argv, expected, places, tmp_path, capsys,
                                                                 monkeypatch):
    store = tmp_path / "store"
    argv = fill(argv, places, store)
    if "--storage" not in argv and argv[0] == "run":
        argv += ["--storage", str(store)]
    before = tree(Path(places["TMP"]))
    started = []

    def ray_init(*args, **kwargs):  # seconds of work, and processes, that bad input must not cost
        started.append(args)
        raise RuntimeError("a Ray was started or joined")

    monkeypatch.setattr("ray.init", ray_init)
    code = main(argv)
    err = capsys.readouterr().err
    assert not started, "refused only after a Ray was started or joined"
    assert code == 2, err
    assert err.startswith("error: ") and expected in err, err
    assert err.count("\n") == 1, err  # one line
    assert not store.exists() or not any(store.iterdir()), "something was written"
    assert tree(Path(places["TMP"])) == before, "something was written beside the inputs"


def tree(root: Path) -> dict[str, int]:
    """Every path under `root` (links not followed) with its size: what a command may not change."""
    return {str(p.relative_to(root)): p.lstat().st_size for p in root.rglob("*")}


def test_real_process_exit_code_and_message(places):
    """The same through the installed entry point, as a user's shell sees it."""
    out = subprocess.run([sys.executable, "-m", "tune_jobs", *SMOKE, "--set", "stop.treshold=0.9"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: stop.treshold: unknown key; did you mean 'threshold'? "
                                  "allowed: threshold, patience, max_epochs, metric")
    assert out.stdout == ""


def test_a_ray_job_driver_joins_the_cluster_in_ray_address(monkeypatch):
    """Inside a Ray Job (RAY_ADDRESS set by Ray), `run` joins that cluster, and a bad value is named."""
    from trainables.errors import InputError
    from tune_jobs.cluster import connect

    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    with pytest.raises(InputError) as raised:
        connect(None)
    assert raised.value.where == "RAY_ADDRESS" and "unsupported scheme http://" in raised.value.problem
