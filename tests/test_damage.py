"""Fault injection on what tltk reads back: a table of damage kinds applied to a real tiny
run directory, its resume state, its feature cache and a tuner search; every command
either rebuilds (caches), refuses in one line naming the file (exit 2), or does what it
can and exits 1, and never shows a traceback.

One tiny run is made per module (demo shapes at 32 px, a two-block backbone whose
frozen stage trains on cached features, 1 + 2 epochs), interrupted once by a Ctrl-C
fault point and resumed; each case damages a copy of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.conftest import ROOT, TINY
from tests.evaluation.conftest import tiny_model
from tltk.cli import main
from tltk.config import DataConfig, HeadConfig, RunConfig, StageConfig
from tltk.data import scan
from tltk.engine.features import load_verified, verify
from tltk.fileio import write_npz
from tltk.models import backbones

pytestmark = pytest.mark.slow


def tiny_config(cache_dir: Path) -> RunConfig:
    return RunConfig(
        recipe="demo", backbone="tiny", weights="none", batch_size=16, seed=0,
        cache_dir=str(cache_dir),
        data=DataConfig(dataset="demo", image_size=32, per_class=4, val_fraction=0.05,
                        test_fraction=0.05),
        head=HeadConfig(layers=0),
        stages=[StageConfig("head", epochs=1, unfreeze="none", augment=False),
                StageConfig("finetune", epochs=2, optimizer="sgd", lr=1e-3, unfreeze="all",
                            augment=False)])


def cli(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """runs/run (complete), runs/interrupted (Ctrl-C in finetune epoch 2), runs/other (a
    3-class run's files), runs/search (a 1-trial tuner search), images and the config."""
    backbones.BACKBONES.register("tiny", TINY)
    root = tmp_path_factory.mktemp("damage")
    config = root / "config.yaml"
    config.write_text(tiny_config(root / "cache").to_yaml())
    run = root / "run"
    stopped = cli("train", "demo", "--config", config, "--out", run,
                  env={"TLTK_FAULT": "finetune:2:mid-epoch", "TLTK_FAULT_SIGNAL": "INT"})
    assert stopped.exit_code == 130, stopped.output
    shutil.copytree(run, root / "interrupted")
    resumed = cli("train", "--resume", run)
    assert resumed.exit_code == 0, resumed.output
    _other_run(root / "other")
    searched = cli("tune", "demo", "--config", config, "--max-trials", "1",
                   "--out", root / "search")
    assert searched.exit_code == 0, searched.output
    Image.new("RGB", (40, 40), (200, 30, 30)).save(root / "ok.png")
    (root / "bad.jpg").write_bytes(b"not an image at all")
    yield root
    backbones.BACKBONES.unregister("tiny")


def _other_run(path: Path) -> None:
    """The files of another run: 3 classes at the same 32 px input."""
    path.mkdir()
    (path / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    tiny_model(seed=3).save(path / "best.keras")
    rng = np.random.default_rng(0)
    for split in ("val", "test"):
        probs = rng.dirichlet(np.ones(3), 6).astype(np.float32)
        write_npz(path / "predictions" / f"best-{split}.npz", probs=probs,
                  labels=np.arange(6) % 3)


@pytest.fixture
def work(base, tmp_path):
    """A fresh copy of everything `base` made, per case (its config uses the copy's cache)."""
    work = tmp_path / "w"
    shutil.copytree(base, work, symlinks=True)
    (work / "config.yaml").write_text(tiny_config(work / "cache").to_yaml())
    return work


# --- damage kinds ---------------------------------------------------------------------

def truncate(path: Path, _work: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * 0.6)])


def empty(path: Path, _work: Path) -> None:
    path.write_bytes(b"")


def garble(path: Path, _work: Path) -> None:
    """Random bytes of the same length."""
    path.write_bytes(np.random.default_rng(1).bytes(max(path.stat().st_size, 64)))


def missing(path: Path, _work: Path) -> None:
    path.unlink()


def content(text: str):
    """Valid JSON/YAML of the wrong types or shape."""
    def write(path: Path, _work: Path) -> None:
        path.write_text(text)
    write.__name__ = "wrong types"
    return write


def from_other(name: str):
    """The same file, from another run (3 classes)."""
    def copy(path: Path, work: Path) -> None:
        shutil.copyfile(work / "other" / name, path)
    copy.__name__ = "from another run"
    return copy


def from_file(name: str):
    """Another file of the same run in its place (e.g. metrics.csv as history.csv)."""
    def copy(path: Path, work: Path) -> None:
        shutil.copyfile(path.parent / name, path)
    copy.__name__ = f"replaced by {name}"
    return copy


def flip_bytes(path: Path, _work: Path) -> None:
    """A few bytes in the middle overwritten: same size, same zip structure."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))


def trial_run_json(work: Path) -> Path:
    return next((work / "search").glob("trials/*/run.json"))


PRED = "run/predictions/best-test.npz"
STATE = "interrupted/backup/finetune/state.json"
EVALUATE = ("evaluate", "{work}/run")
PREDICT = ("predict", "{work}/run", "{work}/ok.png")
EXPORT = ("export", "{work}/run", "--format", "keras", "--out", "{work}/x.keras")
REPORT = ("report", "{work}/run")
ENSEMBLE = ("ensemble", "{work}/run", "{base}/run", "--out", "{work}/ens")
RESUME = ("train", "--resume", "{work}/interrupted")
TUNE = ("tune", "demo", "--config", "{base}/config.yaml", "--max-trials", "1",
        "--out", "{work}/search")

# (file, damage, command, exit code, text the message must hold). Exit 2: refused in
# one line naming the file; 1: partial success; 0: rebuilt.
CASES = [
    ("run/best.keras", truncate, EVALUATE, 2, "best.keras: damaged"),
    ("run/final.keras", empty, EVALUATE, 2, "final.keras: damaged"),
    ("run/best.keras", garble, EVALUATE, 2, "best.keras: damaged"),
    ("run/best.keras", flip_bytes, EVALUATE, 2, "best.keras: damaged"),
    ("run/best.keras", from_other("best.keras"), EVALUATE, 2, "best.keras predicts 3"),
    ("run/config.yaml", missing, EVALUATE, 2, "(no config.yaml)"),
    ("run/config.yaml", garble, EVALUATE, 2, "config.yaml"),
    ("run/config.yaml", content("- a list\n- not a mapping\n"), EVALUATE, 2, "config.yaml"),
    ("run/config.yaml", content("batch_size: lots\n"), EVALUATE, 2, "config.yaml"),
    ("run/classes.json", missing, PREDICT, 2, "classes.json: missing"),
    ("run/classes.json", from_other("classes.json"), PREDICT, 2, "classes.json: lists 3"),
    ("run/classes.json", content('{"circle": 0}'), PREDICT, 2, "classes.json: damaged"),
    ("run/classes.json", truncate, PREDICT, 2, "classes.json: damaged"),
    ("run/best.keras", truncate, PREDICT, 2, "best.keras: damaged"),
    ("run/config.yaml", content("data: {resize: sideways}\n"), PREDICT, 2, "config.yaml"),
    ("run/best.keras", truncate, EXPORT, 2, "best.keras: damaged"),
    ("run/best.keras", missing, EXPORT, 2, "best.keras"),
    ("run/best.keras", from_other("best.keras"), EXPORT, 2, "classes.json: lists 6"),
    ("run/metrics.csv", truncate, REPORT, 2, "metrics.csv: damaged"),
    ("run/metrics.csv", garble, REPORT, 2, "metrics.csv: damaged"),
    ("run/history.csv", empty, REPORT, 2, "history.csv: empty"),
    ("run/history.csv", from_file("metrics.csv"), REPORT, 2, "history.csv: damaged"),
    (PRED, garble, REPORT, 2, "best-test.npz: damaged"),
    (PRED, truncate, REPORT, 2, "best-test.npz: damaged"),
    (PRED, from_other("predictions/best-test.npz"), REPORT, 2, "best-test.npz: damaged"),
    ("run/run.json", garble, REPORT, 2, "run.json: damaged"),
    ("run/run.json", content("[1, 2]"), REPORT, 2, "run.json: damaged"),
    ("run/predictions/best-val.npz", truncate, ENSEMBLE, 2, "best-val.npz: damaged"),
    ("run/predictions/best-val.npz", from_other("predictions/best-val.npz"), ENSEMBLE, 2,
     "best-val.npz: damaged"),
    ("run/classes.json", garble, ENSEMBLE, 2, "classes.json: damaged"),
    (STATE, garble, RESUME, 2, "state.json: damaged"),
    (STATE, content('{"epochs_done": "one"}'), RESUME, 2, "state.json: damaged"),
    ("interrupted/backup/finetune/epoch-0001.weights.h5", truncate, RESUME, 2,
     "epoch-0001.weights.h5: cannot be loaded"),
    ("interrupted/backup/stage-head.weights.h5", garble, RESUME, 2,
     "stage-head.weights.h5: cannot be loaded"),
    ("interrupted/run.json", garble, RESUME, 2, "run.json: damaged"),
    ("interrupted/run.json", content('{"status": "running", "stages": "head"}'), RESUME, 2,
     "run.json: damaged"),
    ("interrupted/history.csv", empty, RESUME, 2, "history.csv: empty"),
    ("interrupted/config.yaml", garble, RESUME, 2, "config.yaml"),
    ("search/keras_tuner/oracle.json", garble, TUNE, 2, "keras_tuner"),
    ("search/search.yaml", garble, TUNE, 2, "search.yaml"),
    (trial_run_json, truncate, TUNE, 2, "run.json: damaged"),
]


def case_id(case) -> str:
    target, damage, command = case[:3]
    name = target if isinstance(target, str) else "trial run.json"
    return f"{command[0]}-{name.split('/', 1)[-1]}-{damage.__name__}"


def check_outcome(result, code: int, expect: str) -> None:
    """The right exit code, no traceback, and one error line holding `expect`."""
    output = result.output
    assert result.exit_code == code, output
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    if code == 2:
        assert len(errors) == 1 and expect in errors[0], output
    else:
        assert expect in output, output


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_damaged_file_is_refused_in_one_line(base, work, case):
    target, damage, command, code, expect = case
    path = work / target if isinstance(target, str) else target(work)
    damage(path, work)
    result = cli(*(a.format(work=work, base=base) for a in command))
    check_outcome(result, code, expect)
    if command is EXPORT:
        assert not (work / "x.keras").exists(), "nothing exported from a damaged run"


def test_permission_denied_is_one_line(work):
    # Permission denial is one of the damage kinds, but these tests usually run as root,
    # who reads any file whatever its mode: then there is nothing to test.
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop reads")
    (work / "run" / "classes.json").chmod(0)
    check_outcome(cli(*(a.format(work=work) for a in PREDICT)), 2, "classes.json: cannot")


# --- the six cases, one test each ------------------------------------------------

def test_truncated_feature_cache_is_logged_deleted_and_rebuilt(work):
    caches = sorted((work / "cache").glob("*.npy"))  # the run's and the tuner trial's
    assert caches and all(verify(p) is None for p in caches)
    for path in caches:
        truncate(path, work)
    result = cli("train", "demo", "--config", work / "config.yaml", "--out", work / "again")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "is damaged" in line]
    rebuilt = [path for path in caches if any(str(path) in line for line in lines)]
    assert len(lines) == len(rebuilt) == 2, result.output  # the train and val features
    assert all("(checksum mismatch (truncated or damaged)): deleted, rebuilding" in line
               for line in lines)
    assert all(verify(path) is None for path in rebuilt)
    reference = (work / "run" / "metrics.csv").read_text()
    assert (work / "again" / "metrics.csv").read_text() == reference, "same features again"


def test_evaluate_with_a_damaged_best_keras_is_one_line(work):
    truncate(work / "run" / "best.keras", work)
    check_outcome(cli("evaluate", work / "run"), 2, f"{work}/run/best.keras: damaged")


def test_predict_without_classes_json_is_one_line(work):
    (work / "run" / "classes.json").unlink()
    result = cli("predict", work / "run", work / "ok.png")
    check_outcome(result, 2, f"{work}/run/classes.json: missing; retrain")


def test_predict_on_some_unreadable_images_prints_the_rest_and_exits_1(work):
    result = cli("predict", work / "run", work / "ok.png", work / "bad.jpg")
    check_outcome(result, 1, f"1 of 2 file(s) could not be read: {work}/bad.jpg")
    assert "1. " in result.output and "error: not a readable image" in result.output
    only_bad = cli("predict", work / "run", work / "bad.jpg")
    check_outcome(only_bad, 1, "1 of 1 file(s) could not be read")
    check_outcome(cli("predict", work / "run", work / "ok.png"), 0, "1. ")


def test_a_saved_model_loads_in_a_fresh_interpreter_after_import_tltk(base):
    script = textwrap.dedent(f"""
        import tltk, keras
        model = keras.models.load_model({str(base / 'run' / 'best.keras')!r})
        print("keras", model.output_shape)
        loaded = tltk.load_model({str(base / 'run')!r}, weights="final")
        model, names = loaded
        print("tltk", loaded.path.name, names)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "keras (None, 6)" in done.stdout
    assert "tltk final.keras ['circle', 'square', 'triangle', 'cross', 'ring', 'stripes']" \
        in done.stdout


def test_weights_of_another_architecture_give_one_line_without_loader_warnings(tmp_path):
    # Weights saved from another network: loading them warns once per layer, then fails.
    other = tiny_model()
    other.save_weights(tmp_path / "other.weights.h5")
    with h5py.File(tmp_path / "other.weights.h5") as f:
        assert len(f["layers"]) > 0
    args = ["train", "demo", "--backbone", "mobilenetv2", "--weights",
            tmp_path / "other.weights.h5", "--image-size", "32", "--per-class", "2"]
    result = cli(*args)
    check_outcome(result, 2, "does not fit backbone mobilenetv2 without top")
    assert len(result.output.strip().splitlines()) == 1, result.output
    verbose = cli("--verbose", *args)
    assert verbose.exit_code == 2 and "UserWarning" in verbose.output, verbose.output


# --- caches --------------------------------------------------------------------------------

CACHE_DAMAGE = [truncate, empty, garble, flip_bytes, "sidecar missing", "another cache"]


@pytest.mark.parametrize("damage", CACHE_DAMAGE,
                         ids=[d if isinstance(d, str) else d.__name__ for d in CACHE_DAMAGE])
def test_damaged_feature_cache_is_logged_and_deleted_for_a_rebuild(work, damage, capsys):
    caches = sorted((work / "cache").glob("*.npy"), key=lambda p: p.stat().st_size)
    path, sidecar = caches[-1], Path(f"{caches[-1]}.sha256")
    shape = np.load(path, allow_pickle=False, mmap_mode="r").shape[:2]
    assert verify(path, shape) is None
    if damage == "sidecar missing":  # killed between the cache and its checksum
        sidecar.unlink()
    elif damage == "another cache":  # intact, with its own checksum, but of other data
        shutil.copyfile(caches[0], path)
        shutil.copyfile(f"{caches[0]}.sha256", sidecar)
    else:
        damage(path, work)
    assert verify(path, shape) is not None
    assert load_verified(path, shape) is None
    assert not path.exists() and not sidecar.exists(), "deleted, so get() rebuilds it"
    assert capsys.readouterr().out.count(f"feature cache {path} is damaged") == 1


def test_damaged_scan_cache_is_logged_and_rescanned(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TLTK_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    first = scan.scan_files(folder, [folder / "a.png"], progress=False)
    (cache_file,) = (tmp_path / "cache" / "scans").glob("*.json")
    for text in ("{trunc", json.dumps({"version": scan.SCAN_VERSION, "files": {
            str(folder / "a.png"): {"size": "big"}}})):
        cache_file.write_text(text)
        caplog.clear()
        with caplog.at_level("WARNING"):
            again = scan.scan_files(folder, [folder / "a.png"], progress=False)
        assert f"scan cache {cache_file} is damaged" in caplog.text
        assert again.files == first.files and again.opened == 1
        assert json.loads(cache_file.read_text())["files"], "rewritten"
