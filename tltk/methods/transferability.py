"""Transferability scores: rank pretrained backbones without fine-tuning them.

Each score reads a backbone's pooled features (or source-class predictions) on the
target training split; higher means the features suit the target labels better.

* `logme` (You et al. 2021): the log marginal likelihood ("evidence") of a Bayesian
  linear model from features to each one-hot label column, maximised over the prior
  precision alpha and noise precision beta, averaged over classes, per sample.
* `h_score` (Bao et al. 2019): tr(cov(f)^-1 cov(E[f | y])), by default with Ledoit-Wolf
  shrinkage so that it stays informative when features outnumber images.
* `leep` (Nguyen et al. 2020): the log expected empirical prediction of the target
  labels through the source classifier's label distribution.

`image_set_distance` is the modified Hausdorff distance (Dubuisson & Jain 1994) between
two image sets in a PCA space fitted on their union, as used by Knudsen & Bach-Nielsen
(2018) to compare source and target domains; in that study the distance did *not*
predict the gain from transfer learning, so it describes datasets, it does not rank
backbones.

Example:
    >>> features = np.random.default_rng(0).normal(size=(100, 16))
    >>> labels = (features[:, 0] > 0).astype(int)
    >>> logme(features, labels) > logme(features[:, 1:], labels)
    True
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.spatial.distance import cdist
from sklearn.covariance import ledoit_wolf
from sklearn.decomposition import PCA

from tltk.errors import TltkError


def _check(features, labels) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64).ravel()
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"expected features [N, D] and labels [N], got {features.shape} "
                         f"and {labels.shape}")
    return features, labels


def logme(features, labels, max_iter: int = 100, tol: float = 1e-6) -> float:
    """LogME: mean over classes of the maximised log evidence per sample.

    For one label column y, the model y = F w + noise with w ~ N(0, I/alpha) and noise
    ~ N(0, 1/beta) has a closed-form evidence; alpha and beta are found by the
    fixed-point updates alpha = gamma / |m|^2, beta = (n - gamma) / |F m - y|^2, with
    gamma the effective number of parameters, all computed in the SVD basis of F.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> labels = np.repeat([0, 1], 50)
        >>> features = rng.normal(size=(100, 16)); features[:, 0] += 4 * labels
        >>> round(logme(features, labels), 2), round(logme(features, rng.permutation(labels)), 2)
        (-0.58, -0.98)

        About -1 for useless features (the second); higher is better.
    """
    features, labels = _check(features, labels)
    u, s, _ = np.linalg.svd(features, full_matrices=False)
    sigma = s ** 2  # eigenvalues of F^T F (the remaining D - k are zero)
    n, dims = features.shape
    evidences = []
    for cls in np.unique(labels):
        y = (labels == cls).astype(np.float64)
        evidences.append(_max_evidence(y, u, s, sigma, n, dims, max_iter, tol))
    return float(np.mean(evidences) / n)


def _max_evidence(y, u, s, sigma, n, dims, max_iter, tol) -> float:
    z = u.T @ y  # y in the left singular basis
    outside = max(float(y @ y - z @ z), 0.0)  # |y|^2 outside the span of F
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        gamma = float(np.sum(beta * sigma / (alpha + beta * sigma)))
        coef = beta * s * z / (alpha + beta * sigma)  # posterior mean m, in the V basis
        residual = float(np.sum((s * coef - z) ** 2)) + outside
        new_alpha = gamma / max(float(coef @ coef), 1e-12)
        new_beta = (n - gamma) / max(residual, 1e-12)
        converged = abs(new_alpha / alpha - 1) < tol and abs(new_beta / beta - 1) < tol
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    return _evidence(z, outside, s, n, dims, alpha, beta)


def _evidence(z, outside, s, n, dims, alpha, beta) -> float:
    sigma = s ** 2
    coef = beta * s * z / (alpha + beta * sigma)
    residual = float(np.sum((s * coef - z) ** 2)) + outside
    # log |alpha I + beta F^T F|: the D - k directions outside the SVD contribute alpha.
    log_det = float(np.sum(np.log(alpha + beta * sigma))) + (dims - len(s)) * np.log(alpha)
    return (dims / 2 * np.log(alpha) + n / 2 * np.log(beta) - n / 2 * np.log(2 * np.pi)
            - beta / 2 * residual - alpha / 2 * float(coef @ coef) - log_det / 2)


def log_evidence(features, y, alpha: float, beta: float) -> float:
    """Log evidence log p(y | F, alpha, beta) of the Bayesian linear model behind LogME.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> labels = np.repeat([0, 1], 50)
        >>> features = rng.normal(size=(100, 16)); features[:, 0] += 4 * labels
        >>> y = (labels == 0).astype(float)
        >>> round(float(log_evidence(features, y, alpha=1.0, beta=10.0)), 1)
        -239.1
    """
    features = np.asarray(features, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    u, s, _ = np.linalg.svd(features, full_matrices=False)
    z = u.T @ y
    outside = max(float(y @ y - z @ z), 0.0)
    return _evidence(z, outside, s, *features.shape, alpha, beta)


def h_score(features, labels, shrink: bool = True) -> float:
    """H-score: tr(cov(f)^-1 cov(E[f | y])), at most classes - 1.

    With more feature dimensions than samples the plain covariance is singular and the
    pseudo-inverse score collapses to classes - 1 for every backbone, so by default
    cov(f) is the Ledoit-Wolf estimate (1 - a) S + a mu I and cov(E[f | y]) is scaled by
    the same 1 - a, the shrinkage H-score of Ibrahim et al. (2022); `shrink=False` gives
    the original score, with a pseudo-inverse.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> labels = np.repeat([0, 1], 50)
        >>> features = rng.normal(size=(100, 16)); features[:, 0] += 4 * labels
        >>> shuffled = rng.permutation(labels)
        >>> round(h_score(features, labels), 2), round(h_score(features, shuffled), 2)
        (0.79, 0.13)

        It tends to 0 for features independent of the labels (the second).
    """
    features, labels = _check(features, labels)
    centred = features - features.mean(axis=0)
    class_means = np.zeros_like(centred)
    for cls in np.unique(labels):
        rows = labels == cls
        class_means[rows] = centred[rows].mean(axis=0)
    cov_g = class_means.T @ class_means / len(features)
    if shrink:
        cov_f, amount = ledoit_wolf(centred, assume_centered=True)
        cov_g = (1 - amount) * cov_g
    else:
        cov_f = centred.T @ centred / len(features)
    return float(np.trace(np.linalg.pinv(cov_f, rcond=1e-10, hermitian=True) @ cov_g))


def leep(source_probs, labels) -> float:
    """LEEP from source-classifier probabilities [N, Z] and target labels [N].

    Example:
        >>> source_probs = np.array([[.9, .1], [.8, .2], [.1, .9]])  # 3 images, 2 source classes
        >>> round(leep(source_probs, [0, 0, 1]), 3), round(leep(source_probs, [1, 0, 0]), 3)
        (-0.245, -0.484)

        Always <= 0; higher is better.
    """
    probs, labels = _check(source_probs, labels)
    classes = labels.max() + 1
    joint = np.zeros((classes, probs.shape[1]))
    np.add.at(joint, labels, probs)
    joint /= len(labels)  # empirical P(y, z)
    conditional = joint / np.maximum(joint.sum(axis=0, keepdims=True), 1e-300)  # P(y | z)
    expected = np.sum(probs * conditional[labels], axis=1)
    return float(np.mean(np.log(np.maximum(expected, 1e-300))))


def modified_hausdorff(a, b) -> float:
    """Modified Hausdorff distance between point sets a [Na, D] and b [Nb, D].

    The larger of the two mean nearest-neighbour distances (from a to b and b to a).

    Example:
        >>> modified_hausdorff([[0, 0]], [[3, 4], [6, 8]])
        7.5
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(max(nearest_distances(a, b).mean(), nearest_distances(b, a).mean()))


def nearest_distances(a: np.ndarray, b: np.ndarray, max_floats: int = 2 ** 24) -> np.ndarray:
    """Euclidean distance from each row of `a` to its nearest row of `b` (scipy's exact
    `cdist`), chunked over `a` so that at most `max_floats` distances are held at once."""
    chunk = max(1, max_floats // max(len(b), 1))
    return np.concatenate([cdist(a[start:start + chunk], b).min(axis=1)
                           for start in range(0, len(a), chunk)])


def pca_project(sets: list[np.ndarray], n_components: int) -> list[np.ndarray]:
    """Project several [N_i, D] sets onto the top principal axes of their union
    (scikit-learn's PCA)."""
    union = np.concatenate(sets).astype(np.float64)
    n_components = min(n_components, *union.shape)
    scores = PCA(n_components, svd_solver="full").fit_transform(union)
    bounds = np.cumsum([0, *(len(s) for s in sets)])
    return [scores[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])]


def image_set_distance(images_a, images_b, n_components: int = 50) -> float:
    """MHD between two image sets [N, H, W, C] (same H, W, C) in a shared PCA space.

    Pixels are scaled to 0..1 before PCA, so distances do not depend on the dtype.

    A dataset-similarity description (Knudsen & Bach-Nielsen 2018); not a predictor of
    transfer-learning gain, which that study found it did not track.

    Example::

        image_set_distance(flowers_64px, dogs_64px, n_components=50)
    """
    flat_a = np.asarray(images_a, dtype=np.float64).reshape(len(images_a), -1) / 255.0
    flat_b = np.asarray(images_b, dtype=np.float64).reshape(len(images_b), -1) / 255.0
    if flat_a.shape[1] != flat_b.shape[1]:
        raise ValueError("both image sets need the same image shape; resize them first")
    proj_a, proj_b = pca_project([flat_a, flat_b], n_components)
    return modified_hausdorff(proj_a, proj_b)


# --- ranking backbones and comparing image sets (the `tltk rank` / `distance` commands) --

SCORES = {"logme": logme, "h_score": h_score}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"}


def rank_backbones(config, backbones: list[str], weights: dict[str, str] | None = None,
                   out=None, say=print):
    """Score each backbone's pooled features of the training split; best LogME first.

    Features come from the bottleneck cache (`tltk.engine.features`), keyed like a training
    run's, so repeated rankings reuse them. `weights` maps backbone names to weights
    (imagenet | none | a file); others use `config.weights`. A backbone with its own
    classifier (a model file with its 1000-class top) is also scored by LEEP on that
    classifier's probabilities. Returns a DataFrame with backbone, weights, image_size,
    features, logme, h_score, leep (NaN without a classifier), extract_s, cached, and
    writes it as `rank.csv` into `out` when given.

    Example::

        rank_backbones(config, ["lite0.keras", "mobilenetv2"], {"mobilenetv2": "mnv2.h5"})
    """
    import keras
    import pandas as pd

    from tltk import data as tltk_data
    from tltk.fileio import write_csv
    from tltk.models.backbones import get_backbone, weights_label

    weights = weights or {}
    unknown = sorted(set(weights) - set(backbones))
    if unknown:
        raise TltkError(f"--weights: {unknown} not among --backbones {backbones}; "
                        "use NAME=PATH with a ranked backbone's name")
    # A typo fails before any work; a model file's options apply to it (and to no name).
    specs = {name: get_backbone(name, _options_for(config, name)) for name in backbones}
    dataset = tltk_data.load(config.data, seed=config.seed)
    train = dataset.splits["train"]
    say(f"ranking {len(specs)} backbones on {dataset.name}: {len(train)} training images, "
        f"{dataset.num_classes} classes")
    rows = []
    for name, spec in specs.items():
        default = "imagenet" if spec.source else config.weights
        chosen = weights.get(name, default) if spec.pretrained else "none"
        keras.utils.set_random_seed(config.seed)  # the same random weights for 'none'
        feats, seconds, cached = _pooled_features(config, spec, chosen, train)
        row = {"backbone": spec.name, "weights": weights_label(spec, chosen),
               "image_size": config.data.image_size or spec.default_size,
               "features": feats.shape[1],
               **{score_name: score(feats, train.labels) for score_name, score in SCORES.items()},
               "leep": float("nan"), "extract_s": round(seconds, 1), "cached": cached}
        if spec.top_classes and chosen != "none":
            row["leep"] = leep(_source_probabilities(config, spec, train), train.labels)
        say(f"  {spec.name}: LogME {row['logme']:.4f}, H-score {row['h_score']:.3f}"
            + (f", LEEP {row['leep']:.4f}" if row["leep"] == row["leep"] else "")
            + f" ({'cached' if cached else f'{seconds:.1f}s extraction'})")
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("logme", ascending=False, ignore_index=True)
    if out is not None:
        write_csv(Path(out) / "rank.csv", table)
    return table


def _options_for(config, name: str):
    """The config's backbone options for a model-file or hub backbone; none for names."""
    from tltk.models import hub, modelfile
    from tltk.models.backbones import BACKBONES

    if name not in BACKBONES and (name.startswith(hub.PREFIX) or modelfile.is_model_file(name)):
        return config.backbone_options
    return None


def _pipeline(config, split, size: int):
    from tltk.data.core import make_pipeline

    def make_inputs(view: int):
        ds = make_pipeline(split, size, config.batch_size, training=False, seed=config.seed,
                           resize_policy=config.data.resize, cache=False)
        return ds.map(lambda x, y: x)
    return make_inputs


def _cache_key(config, spec, checksum: str, size: int) -> dict:
    from tltk.models.backbones import cache_name

    return {"backbone": cache_name(spec), "weights": checksum, "image_size": size,
            "preprocess": spec.preprocess, "resize": config.data.resize,
            "augment": vars(config.augment), "seed": config.seed}


def _pooled_features(config, spec, weights: str, split):
    """(features [N, D] of `split`, seconds taken, whether they came from the cache)."""
    import time

    from tltk.engine.features import FeatureCache
    from tltk.models.backbones import build_backbone, weights_checksum
    from tltk.models.heads import build_classifier, feature_extractor

    size = config.data.image_size or spec.default_size
    backbone = build_backbone(spec, weights, size)
    # Two classes only shape the unused head; the pooled features do not depend on it.
    extractor = feature_extractor(build_classifier(backbone, spec, 2, config.head))
    key = _cache_key(config, spec, weights_checksum(backbone), size)
    cache = FeatureCache(config.cache_dir)
    start = time.time()
    feats = cache.get(extractor, split, key, _pipeline(config, split, size), views=1,
                      desc=f"features {spec.name}")
    cached = not hasattr(cache, "last_extraction_s")
    return feats[0], time.time() - start, cached


def _source_probabilities(config, spec, split) -> np.ndarray:
    """The backbone's own classifier's probabilities [N, classes] on `split` (cached)."""
    from tltk.engine.features import FeatureCache
    from tltk.models.backbones import weights_checksum
    from tltk.models.heads import source_classifier

    size = config.data.image_size or spec.default_size
    model = source_classifier(spec, size)
    key = {**_cache_key(config, spec, weights_checksum(model), size), "output": "source"}
    probs = FeatureCache(config.cache_dir).get(model, split, key, _pipeline(config, split, size),
                                               views=1, desc=f"source classes {spec.name}")
    return probs[0]


def load_image_set(folder, image_size: int, max_images: int | None = 500,
                   seed: int = 0) -> np.ndarray:
    """Up to `max_images` images below `folder` (a seeded sample), as uint8 [N, S, S, 3].

    Example::

        load_image_set("../shared/data/flowers-128", 64).shape  # -> (500, 64, 64, 3)
    """
    from PIL import Image

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise TltkError(f"PATH: folder not found: {root}")
    # Listed here rather than via tltk.data.folder, which would import TensorFlow.
    paths = sorted(p for p in root.rglob("*") if p.is_file()
                   and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not paths:
        raise TltkError(f"PATH: no images found below {root}")
    if max_images and len(paths) > max_images:
        keep = np.random.default_rng(seed).choice(len(paths), max_images, replace=False)
        paths = [paths[i] for i in np.sort(keep)]
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image = image.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
                images.append(np.asarray(image))
        except OSError:  # unreadable or truncated files are left out, as the folder source does
            continue
    if not images:
        raise TltkError(f"PATH: none of the images below {root} could be read")
    return np.stack(images)
