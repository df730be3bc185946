"""Transferability scores and set distances against small independent references."""

import itertools
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.conftest import FLOWERS, MNV2_WEIGHTS, require_shared
from tltk.cli import main
from tltk.methods.transferability import (
    h_score,
    image_set_distance,
    leep,
    load_image_set,
    log_evidence,
    logme,
    modified_hausdorff,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def reference_log_evidence(features, y, alpha, beta):
    """log N(y; 0, I/beta + F F^T/alpha): the evidence with the weights integrated out."""
    n = len(y)
    cov = np.eye(n) / beta + features @ features.T / alpha
    _, log_det = np.linalg.slogdet(cov)
    return -0.5 * (n * np.log(2 * np.pi) + log_det + y @ np.linalg.solve(cov, y))


def grid_max_evidence(features, y):
    """Maximise the reference evidence over log-spaced alpha, beta grids, refined twice."""
    centre, width = np.zeros(2), 8.0
    for _ in range(3):
        grid = np.linspace(-width, width, 81)
        best = max(itertools.product(centre[0] + grid, centre[1] + grid),
                   key=lambda p: reference_log_evidence(features, y, np.exp(p[0]),
                                                        np.exp(p[1])))
        centre, width = np.array(best), width / 20
    return reference_log_evidence(features, y, *np.exp(centre))


def problem(n=24, dims=3, classes=3, signal=1.0, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    features = rng.normal(size=(n, dims)) + signal * np.eye(classes, dims)[labels]
    return features, labels


@pytest.mark.parametrize("n,dims", [(30, 4), (8, 20)])
def test_closed_form_evidence_matches_the_gaussian_marginal(n, dims):
    features, labels = problem(n=n, dims=dims)
    y = (labels == 1).astype(float)
    for alpha, beta in [(0.3, 2.0), (5.0, 0.7)]:
        assert log_evidence(features, y, alpha, beta) == pytest.approx(
            reference_log_evidence(features, y, alpha, beta), rel=1e-9)


def test_logme_equals_grid_maximised_evidence():
    features, labels = problem(n=24, dims=3)
    expected = np.mean([grid_max_evidence(features, (labels == c).astype(float))
                        for c in range(3)]) / len(labels)
    assert logme(features, labels) == pytest.approx(expected, abs=1e-5)


def test_informative_features_score_higher_than_noise():
    features, labels = problem(n=120, dims=8, classes=4, signal=3.0, seed=1)
    noise = np.random.default_rng(2).normal(size=features.shape)
    assert logme(features, labels) > logme(noise, labels) + 0.1
    assert h_score(features, labels) > h_score(noise, labels) + 0.5


def test_h_score_matches_between_over_total_variance_in_one_dimension():
    features, labels = problem(n=40, dims=1, classes=2, signal=2.0)
    f = features[:, 0]
    means = np.array([f[labels == c].mean() for c in (0, 1)])[labels]
    assert h_score(features, labels, shrink=False) == pytest.approx(np.var(means) / np.var(f),
                                                                    rel=1e-9)
    mixed = features @ np.array([[2.0]]) + 1.0  # invariant to invertible affine maps
    assert h_score(mixed, labels, shrink=False) == pytest.approx(
        h_score(features, labels, shrink=False), rel=1e-9)


def test_shrunk_h_score_stays_informative_when_d_exceeds_n():
    rng = np.random.default_rng(6)
    features, labels = problem(n=30, dims=60, classes=3, signal=2.0, seed=7)
    noise = rng.normal(size=features.shape)
    # The plain score degenerates to classes - 1 for any features once D >= N ...
    assert h_score(features, labels, shrink=False) == pytest.approx(2.0, rel=1e-6)
    assert h_score(noise, labels, shrink=False) == pytest.approx(2.0, rel=1e-6)
    # ... the shrunk one still tells informative features from noise, within [0, 2].
    assert 2.0 > h_score(features, labels) > h_score(noise, labels) + 0.1 > 0.1


def test_leep_against_explicit_sums_and_its_perfect_case():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(5), size=30)
    labels = rng.integers(0, 3, 30)
    joint = np.array([[probs[labels == y, z].sum() / 30 for z in range(5)] for y in range(3)])
    expected = np.mean([np.log(sum(joint[labels[i], z] / joint[:, z].sum() * probs[i, z]
                                   for z in range(5))) for i in range(30)])
    assert leep(probs, labels) == pytest.approx(expected, rel=1e-12)
    assert leep(np.eye(3)[labels], labels) == pytest.approx(0.0, abs=1e-12)


def brute_mhd(a, b):
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return max(d.min(axis=1).mean(), d.min(axis=0).mean())


def test_modified_hausdorff_against_brute_force():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(7, 3)), rng.normal(loc=1.0, size=(11, 3))
    assert modified_hausdorff(a, b) == pytest.approx(brute_mhd(a, b), rel=1e-12)
    assert modified_hausdorff(b, a) == modified_hausdorff(a, b)
    assert modified_hausdorff([[0, 0]], [[3, 4], [6, 8]]) == pytest.approx(7.5)
    assert modified_hausdorff(a, a) == 0.0


def test_image_set_distance_is_mhd_in_a_shared_pca_space():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, size=(6, 4, 4, 3)).astype(np.uint8)
    b = rng.integers(0, 256, size=(5, 4, 4, 3)).astype(np.uint8)
    union = np.concatenate([a, b]).reshape(11, -1) / 255.0
    centred = union - union.mean(axis=0)
    axes = np.linalg.svd(centred, full_matrices=False)[2][:3].T
    expected = brute_mhd(centred[:6] @ axes, centred[6:] @ axes)
    assert image_set_distance(a, b, n_components=3) == pytest.approx(expected, rel=1e-9)
    assert image_set_distance(a, a, n_components=3) == pytest.approx(0.0, abs=1e-9)
    jittered = np.clip(a.astype(int) + rng.integers(-5, 6, size=a.shape), 0, 255)
    assert image_set_distance(a, jittered, 10) < image_set_distance(a, b, 10) / 5


def write_images(folder: Path, colour, count: int, rng) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        pixels = np.clip(np.array(colour) + rng.integers(-20, 21, (40, 30, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")


def test_distance_command_on_tiny_folders(tmp_path):
    rng = np.random.default_rng(8)
    write_images(tmp_path / "red" / "sub", (200, 30, 30), 6, rng)
    write_images(tmp_path / "blue", (30, 30, 200), 5, rng)
    (tmp_path / "blue" / "broken.jpg").write_bytes(b"not an image")
    images = load_image_set(tmp_path / "blue", 16)
    assert images.shape == (5, 16, 16, 3) and images.dtype == np.uint8
    runner = CliRunner()
    result = runner.invoke(main, ["distance", str(tmp_path / "red"), str(tmp_path / "blue"),
                                  "--image-size", "16", "--components", "4"])
    assert result.exit_code == 0, result.output
    expected = image_set_distance(load_image_set(tmp_path / "red", 16), images, 4)
    assert f"MHD {expected:.4f} (6 vs 5 images at 16px, 4 PCA components)" in result.output
    missing = runner.invoke(main, ["distance", str(tmp_path / "nope"), str(tmp_path / "blue")])
    assert missing.exit_code == 2 and "folder not found" in missing.output


@pytest.mark.slow
@pytest.mark.realdata
def test_rank_command_on_flowers_with_pretrained_and_random_features(tmp_path):
    require_shared()
    args = ["rank", "folder", "--data", str(FLOWERS), "--backbones", "mobilenetv2,scratch",
            "--weights", f"mobilenetv2={MNV2_WEIGHTS}", "--image-size", "64", "--per-class", "12",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    table = pd.read_csv(tmp_path / "rank.csv")
    assert table["logme"].is_monotonic_decreasing  # best first
    # Pooled MobileNetV2 features; the scratch CNN flattens 2 x 2 x 256 at 64 px.
    assert dict(zip(table["backbone"], table["features"])) == {"mobilenetv2": 1280,
                                                               "scratch": 1024}
    assert np.isfinite(table[["logme", "h_score"]].to_numpy()).all()
    assert not table["cached"].any()
    again = CliRunner().invoke(main, args)  # features now come from the cache
    assert again.exit_code == 0 and again.output.count("cached") >= 2
    bad = CliRunner().invoke(main, args[:6] + ["--weights", "vgg16=x.h5"])
    assert bad.exit_code == 2 and "not among --backbones" in bad.output


def test_rank_scores_leep_for_a_model_file_with_its_own_classifier(tmp_path, tiny_backbone):
    from tests.models.test_modelfile import tiny_classifier
    from tltk.config import DataConfig, RunConfig
    from tltk.methods.transferability import rank_backbones

    model_file = tmp_path / "clf.keras"
    tiny_classifier(classes=7).save(model_file)
    config = RunConfig(backbone="tiny", weights="none", cache_dir=str(tmp_path / "cache"),
                       data=DataConfig(dataset="demo", image_size=32, per_class=6))
    lines = []
    table = rank_backbones(config, [str(model_file), "tiny"], out=tmp_path, say=lines.append)
    rows = table.set_index("backbone")
    assert rows.loc["clf", "weights"] == "the file's own"
    assert np.isfinite(rows.loc["clf", "leep"]) and rows.loc["clf", "leep"] <= 0
    assert np.isnan(rows.loc["tiny", "leep"])  # no source classifier, no LEEP
    assert any("clf: LogME" in line and "LEEP" in line for line in lines)
    assert not any("tiny: LogME" in line and "LEEP" in line for line in lines)
    assert "leep" in pd.read_csv(tmp_path / "rank.csv").columns
