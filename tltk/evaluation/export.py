"""Export a run's model as .keras, a SavedModel or TFLite (optionally quantized).

Every export takes raw RGB 0..255 at the run's input size and returns softmax
probabilities; the `.keras` file holds only built-in Keras layers, so it loads in plain
Keras (safe mode) without tltk. The SavedModel's `serving_default` also takes encoded
JPEG/PNG bytes and returns class names and probabilities (decoding, resizing and
preprocessing inside the graph); its `serve` takes float pixels. Every export gets a
`labels.txt` (class names in output order) beside it. `tltk.evaluation.measure`
measures each export on the run's data.

Example::

    path = export_model("runs/flowers", "tflite", "flowers.tflite", quantize="int8")
    load_exported(path, "tflite")(images).shape  # -> (N, 5)
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tltk.config import EXPORT_FORMATS, INT8_IO, QUANTIZE
from tltk.data.core import decode_image_bytes, prepare_image
from tltk.errors import TltkError
from tltk.evaluation.runmodel import input_size, load_run_model, resize_policy
from tltk.fileio import save_model, write_bytes, write_text
from tltk.log import native_stderr_muted
from tltk.models.preprocessing import Preprocess, builtin_preprocess
from tltk.rundir import RunDir, open_run
from tltk.saving import load_keras_file

LABELS_FILE = "labels.txt"


def export_model(run_dir: str | Path, fmt: str, out: str | Path, weights: str = "best",
                 quantize: str = "none", int8_io: str = "uint8",
                 representative=None) -> Path:
    """Export a run's model as `.keras`, a TF SavedModel folder or a `.tflite` file.

    `quantize` (TFLite only): `dynamic` (int8 weights), `float16` (float16 weights) or
    `int8` (full-integer, `int8_io` input and output, calibrated on `representative`:
    uint8 images [N, S, S, 3] from the run's training split).
    """
    _check_options(fmt, quantize, int8_io, representative)
    run = open_run(run_dir)
    out = check_target(fmt, out)
    model = plain_model(load_run_model(run.path, weights))
    if fmt == "keras":
        save_model(model, out)
    elif fmt == "savedmodel":
        _write_folder(out, lambda tmp: _export_serving(model, tmp, run.class_names(),
                                                       resize_policy(run)))
    else:
        write_bytes(out, _tflite_bytes(model, quantize, int8_io, representative))
    write_text(out.parent / LABELS_FILE, "".join(f"{name}\n" for name in run.class_names()))
    return out


def _check_options(fmt: str, quantize: str, int8_io: str, representative) -> None:
    if fmt not in EXPORT_FORMATS:
        raise TltkError(f"--format: '{fmt}' is not one of {', '.join(EXPORT_FORMATS)}")
    if quantize not in QUANTIZE:
        raise TltkError(f"--quantize: '{quantize}' is not one of {', '.join(QUANTIZE)}")
    if quantize != "none" and fmt != "tflite":
        raise TltkError(f"--quantize {quantize}: only TFLite exports are quantized; "
                        "use --format tflite")
    if int8_io not in INT8_IO:
        raise TltkError(f"--int8-io: '{int8_io}' is not one of {', '.join(INT8_IO)}")
    if quantize == "int8" and representative is None:
        raise TltkError("--quantize int8: needs representative training images to calibrate")


def check_target(fmt: str, out: str | Path) -> Path:
    """Refuse an `--out` that the format cannot be written to; returns it as a Path."""
    out = Path(out)
    if fmt == "keras" and out.suffix != ".keras":
        raise TltkError(f"--out: a Keras model file must end in .keras, got {out}")
    if fmt == "tflite" and out.suffix != ".tflite":
        raise TltkError(f"--out: a TFLite model file must end in .tflite, got {out}")
    if fmt == "savedmodel" and out.exists() and not _replaceable_folder(out):
        raise TltkError(f"--out: {out} already exists; choose a new folder or delete it")
    return out


def plain_model(model: keras.Model) -> keras.Model:
    """The model with tltk's `Preprocess` layer (in runs saved before) replaced by built-in
    layers, sharing every other layer, so it saves to a file plain Keras can load."""
    if not any(isinstance(layer, Preprocess) for layer in model.layers):
        return model
    return keras.models.clone_model(model, clone_function=builtin_preprocess)


def _replaceable_folder(path: Path) -> bool:
    """An empty folder or an earlier SavedModel (re-exporting replaces it)."""
    return path.is_dir() and (not any(path.iterdir()) or (path / "saved_model.pb").is_file())


def _write_folder(out: Path, write) -> None:
    # Write into a sibling temp folder and rename, so a failed export leaves no half folder.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    old = out.parent / f".{out.name}.old"
    try:
        write(tmp)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    finally:
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover)


def _export_serving(model: keras.Model, out: Path, class_names: list[str], policy: str):
    """A SavedModel with `serving_default` (encoded image bytes [N] -> label, classes,
    probabilities) and `serve` (float32 pixels [N, S, S, 3] -> probabilities)."""
    size = input_size(model)
    names = tf.constant(class_names)

    def pixels(data):
        # The same decoding and resizing as training's pipeline (tltk.data.core).
        return tf.cast(prepare_image(decode_image_bytes(data), size, policy), tf.float32)

    def from_bytes(images):
        batch = tf.map_fn(pixels, images, fn_output_signature=tf.TensorSpec(
            [size, size, 3], tf.float32))
        probs = model(batch, training=False)
        return {"label": tf.gather(names, tf.argmax(probs, axis=-1)), "probabilities": probs,
                "classes": tf.broadcast_to(names, tf.shape(probs))}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda x: model(x, training=False),
                         input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    archive.add_endpoint("serving_default", from_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string)])
    archive.write_out(str(out), verbose=False)


def _tflite_bytes(model: keras.Model, quantize: str, int8_io: str, representative) -> bytes:
    with tempfile.TemporaryDirectory(prefix="tltk-export-") as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantize == "int8":
            converter.representative_dataset = lambda: (
                [image[None].astype(np.float32)] for image in representative)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = converter.inference_output_type = \
                tf.as_dtype(int8_io)
        with native_stderr_muted():  # the converter's native notices (MLIR, quantizer)
            return converter.convert()


def load_exported(path: str | Path, fmt: str, threads: int | None = None):
    """A callable `images [N, S, S, 3] float32 0..255 -> probs [N, C]` for an export.

    Example::

        predict = load_exported("flowers.tflite", "tflite")
        predict(np.zeros((2, 160, 160, 3), np.float32)).shape  # -> (2, 5)
    """
    if fmt not in EXPORT_FORMATS:
        raise TltkError(f"--format: '{fmt}' is not one of {', '.join(EXPORT_FORMATS)}")
    return open_export(Path(path), threads)[0]


class TFLiteModel:
    """A `.tflite` classifier run with LiteRT: float 0..255 pixels in, probabilities out,
    (de)quantizing uint8/int8 input and output with the file's own scale and zero point.

    Example::

        model = TFLiteModel("model-int8.tflite", threads=1)
        model.size, model(np.zeros((1, 160, 160, 3), np.float32)).shape  # 160, (1, 5)
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        # LiteRT (ai-edge-litert) is where tf.lite.Interpreter moved; TF warns that its
        # own copy is deprecated. It has wheels for every Python tltk supports (3.10-3.12).
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.source = self.interpreter.get_input_details()[0]
        self.target = self.interpreter.get_output_details()[0]
        self.size = int(self.source["shape"][1])
        self.batch = None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self.batch != len(images):  # resizing re-plans the graph: only when it changes
            self.interpreter.resize_tensor_input(self.source["index"], images.shape)
            with native_stderr_muted():  # "INFO: Created TensorFlow Lite XNNPACK delegate"
                self.interpreter.allocate_tensors()
            self.batch = len(images)
        self.interpreter.set_tensor(self.source["index"], _quantize(images, self.source))
        self.interpreter.invoke()
        return _dequantize(self.interpreter.get_tensor(self.target["index"]), self.target)

    def contract(self) -> str:
        """The input and output a caller must honour, in one line."""
        dtype = np.dtype(self.source["dtype"]).name
        scale, zero = self.source["quantization"]
        coded = f" (quantized: scale {scale:.4g}, zero point {zero})" if scale else ""
        out = np.dtype(self.target["dtype"]).name
        return (f"input {dtype} [N, {self.size}, {self.size}, 3] RGB pixels 0..255{coded}; "
                f"output {out} [N, {self.target['shape'][-1]}] probabilities in "
                f"{LABELS_FILE} order")


def _quantize(images: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail["quantization"]
    if dtype == np.float32 or not scale:
        return images.astype(dtype)
    limits = np.iinfo(dtype)
    return np.clip(np.round(images / scale + zero), limits.min, limits.max).astype(dtype)


def _dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    if np.dtype(detail["dtype"]) == np.float32 or not scale:
        return values.astype(np.float32)
    return (values.astype(np.float32) - zero) * scale


def read_labels(path: Path, labels: str | Path | None = None) -> list[str]:
    """Class names for an exported model, in output order: `labels` (one per line), else
    the `labels.txt` written beside it, else the classes.json of the run it sits in."""
    beside = Path(labels) if labels else path.parent / LABELS_FILE
    if beside.is_file():
        return [line.strip() for line in beside.read_text().splitlines() if line.strip()]
    if labels is None and (path.parent / "classes.json").is_file():
        return RunDir(path.parent).class_names()
    raise TltkError(f"--labels: no class names for {path} ({beside} not found); pass "
                    "--labels FILE (one class name per line, in output order)")


def open_export(path: Path, threads: int | None = None):
    """(predict, input size, Keras model or None) for a `.keras`, `.tflite` or SavedModel;
    `predict` maps float32 images 0..255 [N, S, S, 3] to probabilities [N, C]."""
    if path.is_dir():
        # Keep the loaded object alive: `serve` only holds weak references to its variables.
        loaded = tf.saved_model.load(str(path))
        spec = loaded.serve.input_signature[0]
        return (lambda images: loaded.serve(tf.constant(images, tf.float32)).numpy(),
                int(spec.shape[1]), None)
    if path.suffix == ".tflite":
        model = TFLiteModel(path, threads)
        return model, model.size, None
    if path.suffix != ".keras":
        raise TltkError(f"{path}: not a run directory, .keras, .tflite or SavedModel folder")
    model = load_keras_file(path)
    return (lambda images: np.asarray(model.predict_on_batch(images))), input_size(model), model
