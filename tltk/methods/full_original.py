"""The "Full Original" baseline: a backbone's own 1000-class ImageNet classifier,
evaluated on a dataset whose classes are ImageNet classes (`dogs`, `dogs-v2`, or a
folder whose subfolders are named by WordNet id, like the raw Stanford Dogs `Images/`).

Each image gets the original classifier's 1000 probabilities; those of the dataset's
classes (matched by WordNet id) are kept and renormalised, which gives top-1 and top-k
over the dataset's classes. The share of images whose top-1 over all 1000 classes is
*not* one of the dataset's classes is reported as `outside` (percent).

Example::

    probs_c, outside = map_imagenet_to_classes(probs_1000, imagenet_index(
        imagenet_wnids(), ["n02110063", "n02110185"]))  # malamute, siberian husky
    table = full_original(recipes.dogs.config().override({"backbone": "mobilenetv2",
                          "weights": "mobilenet_v2_1.0_224.h5", "out": "runs/orig"}))
"""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from tltk.errors import TltkError
from tltk.evaluation.metrics import default_k, metrics_rows, predict_split
from tltk.fileio import write_csv, write_npz, write_text
from tltk.models.backbones import config_backbone, keras_cache_dir
from tltk.models.preprocessing import preprocess_layer
from tltk.models.spec import BackboneSpec
from tltk.rundir import RunDir

IMAGENET_CLASSES = 1000
WNID = re.compile(r"^(n\d{8})(?:$|[-_ ])")
# Where installed tensorflow-datasets keeps ImageNet's WordNet ids in label order (the
# order of Keras' 1000-class outputs); older tfds releases used the second path.
TFDS_LABEL_FILES = ("datasets/imagenet2012/labels.txt",
                    "image_classification/imagenet2012_labels.txt")


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet WordNet ids in the order of Keras' classifier outputs.

    Example:
        >>> imagenet_wnids()[151]  # Chihuahua
        'n02085620'
    """
    import tensorflow_datasets as tfds

    root = Path(tfds.__file__).parent
    for name in TFDS_LABEL_FILES:
        if (root / name).is_file():
            wnids = (root / name).read_text().split()
            if len(wnids) == IMAGENET_CLASSES:
                return wnids
    raise TltkError("the ImageNet class list (WordNet ids) was not found in the installed "
                    "tensorflow-datasets; reinstall it with `pip install tensorflow-datasets`")


def imagenet_index(imagenet: list[str], class_wnids: list[str]) -> np.ndarray:
    """For each ImageNet output, the index of the dataset class with its WordNet id, or -1.

    Example:
        >>> imagenet_index(["n01440764", "n02085620", "n02085782"], ["n02085782", "n02085620"])
        array([-1,  1,  0])
    """
    position = {wnid: i for i, wnid in enumerate(class_wnids)}
    known = set(imagenet)
    missing = [w for w in class_wnids if w not in known]
    if missing:
        raise TltkError(f"--data: {len(missing)} class(es) are not ImageNet classes "
                        f"(e.g. {missing[0]}); the full-original baseline needs classes that "
                        "the 1000-class ImageNet classifier knows")
    return np.asarray([position.get(wnid, -1) for wnid in imagenet], dtype=np.int64)


def map_imagenet_to_classes(probs_1000: np.ndarray, class_index_of_imagenet: np.ndarray):
    """Restrict 1000-class probabilities to the dataset's classes.

    `class_index_of_imagenet[i]` is the dataset class of ImageNet output i, or -1. Returns
    `(probs_C, outside_rate)`: probabilities over the C dataset classes, renormalised to
    sum to 1 (ImageNet outputs sharing a class are summed), and the percentage of rows
    whose argmax over all 1000 outputs maps to no dataset class.

    Example:
        >>> probs = np.array([[.5, .3, .2], [.1, .2, .7]])
        >>> p, outside = map_imagenet_to_classes(probs, np.array([-1, 1, 0]))
        >>> p.astype(float).round(2).tolist(), outside
        ([[0.4, 0.6], [0.78, 0.22]], 50.0)
    """
    probs_1000 = np.asarray(probs_1000, dtype=np.float64)
    index = np.asarray(class_index_of_imagenet)
    num_classes = int(index.max()) + 1
    mapped = index >= 0
    onehot = np.zeros((len(index), num_classes))
    onehot[np.flatnonzero(mapped), index[mapped]] = 1.0
    probs = probs_1000 @ onehot
    totals = probs.sum(axis=1, keepdims=True)
    probs = np.divide(probs, totals, out=np.zeros_like(probs), where=totals > 0)
    outside = 100.0 * float(np.mean(~mapped[probs_1000.argmax(axis=1)])) if len(probs) else 0.0
    return probs.astype(np.float32), outside


def class_wnids(data_cfg, class_names: list[str]) -> list[str]:
    """WordNet ids of a dataset's classes, in label order.

    `dogs` / `dogs-v2` take them from tfds' Stanford Dogs label names; other datasets
    must name their classes by WordNet id (`n02085620`, `n02085620-Chihuahua`).
    """
    if data_cfg.dataset in ("dogs", "dogs-v2"):
        from tltk.data.tfds_sources import DOGS, dog_wnids, tfds_builder

        return dog_wnids(tfds_builder(DOGS, data_cfg.path))
    matches = [WNID.match(name) for name in class_names]
    if not all(matches):
        bad = class_names[[m is None for m in matches].index(True)]
        raise TltkError(f"--data: class '{bad}' of dataset '{data_cfg.dataset}' carries no "
                        "WordNet id; the full-original baseline needs ImageNet classes: use "
                        "dogs / dogs-v2, or folders named like n02085620-Chihuahua")
    return [m.group(1) for m in matches]


def include_top_file(spec: BackboneSpec, image_size: int) -> str:
    """Keras' file name for the backbone's include-top ImageNet weights.

    Example::

        include_top_file(get_backbone("vgg19"), 224)
        # 'vgg19_weights_tf_dim_ordering_tf_kernels.h5'
    """
    name = (spec.imagenet_file or f"{spec.name}.h5").replace("{size}", str(image_size))
    return re.sub(r"_no_?top(?=\.h5$)", "", name)


def build_imagenet_classifier(spec: BackboneSpec, weights: str, image_size: int):
    """Raw RGB 0..255 -> preprocess -> the backbone's own 1000-class ImageNet classifier.

    `weights`: `imagenet` (Keras' cache, else a download), a local include-top weights
    file, or `none` (random weights: for testing the pipeline only). A model file with
    its 1000-class top is its own classifier.
    """
    if spec.source:
        return _source_classifier(spec, image_size)
    application = _application(spec)
    shape = (image_size, image_size, 3)
    if weights == "imagenet":
        classifier = _imagenet_classifier(application, spec, shape)
    else:
        classifier = application(include_top=True, weights=None, input_shape=shape)
        if weights != "none":
            _load_include_top(classifier, spec, Path(weights).expanduser(), image_size)
    inputs = keras.Input(shape, name="image")
    x = preprocess_layer(spec.preprocess)(inputs)
    return keras.Model(inputs, classifier(x), name=f"{spec.name}_imagenet")


def _source_classifier(spec: BackboneSpec, image_size: int):
    from tltk.models.heads import source_classifier

    if spec.top_classes != IMAGENET_CLASSES:
        has = f"a {spec.top_classes}-class top" if spec.top_classes else "no classifier top"
        raise TltkError(f"--backbone: {spec.source} has {has}; the full-original baseline "
                        "needs a model with its 1000-class ImageNet classifier")
    return source_classifier(spec, image_size)


def _application(spec: BackboneSpec):
    if not spec.pretrained or spec.app is None:
        raise TltkError(f"--backbone: {spec.name} has no ImageNet classifier to evaluate; "
                        "choose a pretrained keras.applications backbone (see `tltk backbones`)")
    return getattr(keras.applications, spec.app)


def _imagenet_classifier(application, spec: BackboneSpec, shape):
    try:
        return application(include_top=True, weights="imagenet", input_shape=shape)
    except Exception as exc:  # noqa: BLE001 - any fetch failure gets the same advice
        if isinstance(exc, ValueError) and "input" in str(exc).lower():
            raise TltkError(f"--image-size: {shape[0]} px does not fit {spec.name}'s ImageNet "
                            f"classifier; use --image-size {spec.default_size}") from None
        fname = include_top_file(spec, shape[0])
        raise TltkError(
            f"--weights: {spec.name}'s 1000-class ImageNet weights could not be loaded "
            f"(offline?); pass --weights PATH to a local include-top weights file ({fname}), "
            f"or put that file in {keras_cache_dir()}") from None


def _load_include_top(model, spec: BackboneSpec, path: Path, image_size: int) -> None:
    if not path.is_file():
        raise TltkError(f"--weights: file not found: {path}; give {spec.name}'s include-top "
                        f"ImageNet weights ({include_top_file(spec, image_size)})")
    try:
        model.load_weights(str(path))
    except Exception as exc:  # noqa: BLE001 - shape/format mismatches all mean the same fix
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise TltkError(f"--weights: {path} does not fit {spec.name} with its 1000-class top "
                        f"at {image_size} px ({first}); give the include-top weights file "
                        f"({include_top_file(spec, image_size)})") from None


def full_original(config) -> pd.DataFrame:
    """Evaluate `config.backbone`'s ImageNet classifier on `config.data`'s eval splits.

    Writes to `config.out`: `metrics.csv` (weights=original; top1, topk, k and outside,
    in percent), `classes.json`, `predictions/original-<split>.npz` (probabilities over
    the dataset's classes) and `config.yaml`, so `tltk report` and `tltk ensemble`
    accept the folder. Returns the metrics.
    """
    from tltk import data as tltk_data

    if not config.out:
        raise TltkError("--out: the baseline needs --out DIR for its metrics")
    spec = config_backbone(config)
    size = config.data.image_size or spec.default_size
    model = build_imagenet_classifier(spec, config.weights, size)  # fails fast on weights
    dataset = tltk_data.load(config.data, seed=config.seed)
    index = imagenet_index(imagenet_wnids(), class_wnids(config.data, dataset.class_names))
    k = config.top_k or default_k(dataset.num_classes)
    run = RunDir(config.out)
    rows = []
    for split in dataset.eval_splits():
        data = dataset.splits[split]
        probs_1000 = predict_split(model, dataset, split, size, config.batch_size,
                                   config.data.resize)
        probs, outside = map_imagenet_to_classes(probs_1000, index)
        arrays = {"probs": probs, "labels": data.labels}
        if data.paths is not None:
            arrays["paths"] = np.asarray(data.paths)
        write_npz(run.file("predictions") / f"original-{split}.npz", **arrays)
        rows.append({**metrics_rows("original", split, probs, data.labels, k),
                     "outside": round(outside, 2)})
    metrics = pd.DataFrame(rows, columns=["weights", "split", "top1", "topk", "k", "outside"])
    write_text(run.file("config.yaml"), config.override({"stages": []}).to_yaml())
    run.write_json("classes.json", dataset.class_names)
    write_csv(run.file("metrics.csv"), metrics)
    run.set_status("complete")
    return metrics
