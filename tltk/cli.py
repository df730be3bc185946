"""The `tltk` command line.

Exit status: 0 when everything asked for was done; 1 when some inputs failed (e.g.
unreadable images given to `predict`: the others are still predicted); 2 for an error
the user must fix first (a bad argument or a damaged file), printed as one line on
stderr (`tltk --debug ...` shows the traceback); 130 after Ctrl-C, which leaves a
training run resumable. `tltk --verbose ...` shows Keras and TensorFlow detail.

Example:
    $ tltk train demo
    $ tltk train folder --data photos/ --backbone mobilenetv2 --weights mnv2.weights.h5
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from tltk.config import (
    EXPORT_FORMATS,
    INT8_IO,
    PREDICT_FORMATS,
    QUANTIZE,
    RUN_WEIGHTS,
    Precision,
    Preprocess,
    Resize,
    choices,
)
from tltk.errors import TltkError

EXIT_PARTIAL, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class TltkGroup(click.Group):
    """A click group that prints user errors as one line (tracebacks with --debug).

    click's own usage errors (an unknown option, a bad choice) get the same one-line
    `error:` form, with the command whose `--help` explains it.
    """

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            _usage_error(exc)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            _usage_error(exc)
        except TltkError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"interrupted{_resume_hint(ctx)}", err=True)
            sys.exit(EXIT_INTERRUPTED)


def _usage_error(exc: click.UsageError):
    """Print click's usage error as tltk's one line and exit with status 2.

    Example: `error: No such option: --epoch (Possible options: --epochs-finetune,
    --epochs-head); see `tltk train --help``.
    """
    message = " ".join(exc.format_message().split()).rstrip(".")
    where = f"; see `{exc.ctx.command_path} --help`" if exc.ctx else ""
    click.echo(f"error: {message}{where}", err=True)
    sys.exit(EXIT_USAGE)


def _resume_hint(ctx) -> str:
    """'; resume with ...' when Ctrl-C stopped a training run, which is then resumable."""
    run = (ctx.obj or {}).get("run_dir")
    if not run:
        return ""
    return f": {run} is resumable; continue it with `tltk train --resume {run}`"


@click.group(cls=TltkGroup, context_settings={"show_default": True})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option("--verbose", is_flag=True,
              help="Show Keras and TensorFlow detail (loader warnings, retracing notices).")
@click.version_option(package_name="tltk")
@click.pass_context
def main(ctx, debug, verbose):
    """tltk: transfer learning for image classification on Keras 3.

    Exit status: 0 all done, 1 some inputs failed, 2 an error to fix first,
    130 interrupted (Ctrl-C).
    """
    from tltk.lazy import set_muted
    from tltk.log import set_verbose

    ctx.obj = {"debug": debug, "verbose": verbose}
    set_verbose(verbose)
    # TensorFlow loads only when a command needs it (help and usage errors stay quick),
    # with its native start-up lines muted unless --debug (see tltk.lazy).
    set_muted(not debug)


def _overrides(**flags) -> dict:
    """Map CLI flags to dotted RunConfig keys (None means 'not given')."""
    keys = {"backbone": "backbone", "weights": "weights", "data": "data.path",
            "data_dir": "data.path", "dataset": "data.dataset", "image_size": "data.image_size",
            "batch_size": "batch_size", "seed": "seed",
            "out": "out", "precision": "precision", "per_class": "data.per_class",
            "class_weight": "data.class_weight", "resize": "data.resize",
            "strategy": "strategy", "cache_dir": "cache_dir", "cut": "backbone_options.cut",
            "blocks": "backbone_options.blocks", "preprocess": "backbone_options.preprocess"}
    if flags.get("blocks") is not None:
        flags = {**flags, "blocks": [b.strip() for b in flags["blocks"].split(",") if b.strip()]}
    out = {keys[k]: v for k, v in flags.items() if k in keys and v is not None}
    if flags.get("jit"):
        out["jit"] = True
    if flags.get("deterministic"):
        out["deterministic"] = True
    if flags.get("no_v2"):
        out["data.v2"] = False
    return out


def _options(*options):
    """One decorator applying several click options, listed in help in this order."""
    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command
    return apply


# Option groups shared by the commands (each declared once).
source_options = _options(
    click.option("--cut", help="Model-file/hub backbone: the layer whose output is the "
                 "feature map (default: the last 4-D one)."),
    click.option("--blocks", help="Model-file/hub backbone: block names (layer-name "
                 "prefixes), overriding the inferred ones, e.g. block7a,block6d."),
    click.option("--preprocess", type=click.Choice(choices(Preprocess)),
                 help="Input normalisation, for a model without its own rescaling."))
model_options = _options(
    click.option("--backbone", help="Backbone name (see `tltk backbones`), a .keras/.h5 "
                 "model file, or hub:PRESET_OR_DIR."),
    click.option("--weights", help="imagenet | none | path to a weights file."),
    source_options)
data_options = _options(
    click.option("--data", help="Image folder (folder recipe), or a tfds data_dir."),
    click.option("--image-size", type=int, help="Input size in pixels (default: backbone's)."))
per_class_option = click.option("--per-class", type=int,
                                help="Use at most N training images per class.")
run_options = _options(
    click.option("--batch-size", type=int, help="Images per batch (default: the recipe's)."),
    click.option("--seed", type=int, help="Random seed of training (default: the recipe's, 0)."))
config_option = click.option("--config", "config_file", type=click.Path(),
                             help="YAML config to start from (instead of the recipe's).")
epochs_options = _options(
    click.option("--epochs-head", type=int,
                 help="Epochs of the first (bottleneck) stage; 0 skips it."),
    click.option("--epochs-finetune", type=int,
                 help="Epochs of every later (fine-tuning) stage; 0 skips them."))
set_option = click.option(
    "--set", "sets", multiple=True, metavar="KEY=VALUE",
    help="Override any config key, e.g. stages.finetune.schedule=cosine (repeatable).")
mixup_option = click.option(
    "--mixup", type=float, metavar="ALPHA",
    help="Mixup on every stage's training stream, lam ~ Beta(ALPHA, ALPHA); e.g. 0.2.")


def _config(recipe, config_file, flags, sets=(), **stage_fields):
    """The command's config: the recipe's (or --config's), then flags and --set."""
    from tltk.recipes import base_config, configure

    return configure(base_config(recipe, config_file), _overrides(**flags), sets,
                     **stage_fields)


@main.command()
@click.pass_context
@click.argument("recipe", required=False)
@click.option("--resume", "resume_dir", type=click.Path(),
              help="Continue the interrupted run in RUN_DIR after its last completed epoch.")
@model_options
@data_options
@per_class_option
@run_options
@click.option("--data-dir", help="tfds data_dir holding prepared tfds datasets.")
@click.option("--dataset", help="Dataset source: demo, folder, flowers, dogs, dogs-v2.")
@click.option("--no-v2", is_flag=True, default=None,
              help="dogs: evaluate without the ImageNetV2 'v2' split (recorded in config.yaml).")
@epochs_options
@config_option
@click.option("--out", help="Run directory (default runs/<recipe>-<backbone>-<time>).")
@click.option("--class-weight", type=click.Choice(["balanced"]), help="Re-weight classes.")
@click.option("--resize", type=click.Choice(choices(Resize)),
              help="How images reach the input size: stretch, centre-crop or pad "
                   "(default: the recipe's, stretch).")
@click.option("--precision", type=click.Choice(choices(Precision)),
              help="Compute precision (default: float32; with --budget, mixed_bfloat16 "
                   "for a dense keras.applications backbone on a CPU with AMX bf16 units).")
@click.option("--jit", is_flag=True, help="Compile with XLA.")
@click.option("--cache-features/--no-cache-features", default=None,
              help="Train frozen stages on cached bottleneck features (default on).")
@click.option("--deterministic", is_flag=True,
              help="Deterministic TensorFlow kernels: same --seed, same results.")
@click.option("--strategy", help="auto | mirrored | multiworker (tf.distribute; see README).")
@mixup_option
@click.option("--unfreezing", type=click.Choice(["gradual", "chain-thaw"]),
              help="Replace the fine-tuning stages: thaw one more top block per stage "
                   "(gradual), or one block at a time, then all (chain-thaw).")
@click.option("--unfreeze-blocks", type=int, default=3,
              help="How many top blocks --unfreezing thaws.")
@click.option("--dry-run", is_flag=True,
              help="Print the plan, cache sizes against the memory budget and estimated "
                   "times per stage (from a few timed batches); train nothing.")
@click.option("--budget", metavar="DURATION",
              help="Wall-clock budget from start to last file, e.g. 90s, 10m, 1.5h: tltk "
                   "times this machine and plans image size, stages and epochs to fit it.")
@set_option
def train(ctx, recipe, config_file, epochs_head, epochs_finetune, cache_features, resume_dir,
          mixup, unfreezing, unfreeze_blocks, sets, dry_run, budget, **flags):
    """Train RECIPE (see `tltk recipes`) and evaluate best and final weights.

    Rerunning with the same --out continues an interrupted run, as does --resume RUN_DIR.
    """
    from tltk.engine import train as train_config
    from tltk.methods.unfreezing import restage

    stage_fields = {"epochs_head": epochs_head, "epochs_finetune": epochs_finetune,
                    "cache_features": cache_features}
    if resume_dir:
        if budget:
            raise TltkError("--budget: not used with --resume; the run continues the plan in "
                            "its config.yaml")
        if unfreezing or sets or mixup is not None:
            raise TltkError("--unfreezing/--set/--mixup: not used with --resume; the run "
                            "continues with its own config.yaml")
        config = _resume_config(resume_dir, recipe, config_file, flags, stage_fields)
    else:
        if recipe is None and not config_file:
            raise TltkError("RECIPE: missing; give a recipe (see `tltk recipes`) or "
                            "--resume RUN_DIR")
        config = _config(recipe, config_file, flags, sets, mixup=mixup, **stage_fields)
        if unfreezing:
            config = restage(config, unfreezing, unfreeze_blocks)
    callbacks = []
    if budget:
        # The planner picks the precision unless the command line or a config file did.
        chosen = flags.get("precision") is not None or config_file is not None
        config, callbacks = _budgeted(config, budget, stage_fields, pick_precision=not chosen)
        if dry_run:
            return
    if dry_run:
        from tltk.engine.dryrun import dry_run as plan

        plan(config, say=click.echo)
        return
    # Ctrl-C leaves the run directory resumable; the hint names it (see TltkGroup).
    train_config(config, on_start=lambda run: ctx.obj.update(run_dir=str(run.path)),
                 callbacks=callbacks)


def _budgeted(config, budget, stage_fields, pick_precision: bool):
    """`--budget`: the planned config and the Deadline that keeps the run within it."""
    from tltk.engine.budget import Deadline, command_started, parse_duration, plan_budget

    seconds = parse_duration(budget)
    if stage_fields["epochs_head"] is not None or stage_fields["epochs_finetune"] is not None:
        raise TltkError("--budget: it plans the epochs; leave out --epochs-head and "
                        "--epochs-finetune")
    started = command_started()
    config = plan_budget(config, seconds, started, say=click.echo, pick_precision=pick_precision)
    return config, [Deadline(started + config.budget["plan"]["train_until_s"])]


def _resume_config(run_dir, recipe, config_file, flags, stage_fields):
    """`tltk train --resume RUN_DIR`: the run's own config; other flags must agree with it."""
    from tltk.engine import resume_config
    from tltk.recipes import configure

    if config_file:
        raise TltkError("--config: not used with --resume (the run's config.yaml is); "
                        "leave out one of them")
    if flags.get("out") and os.path.abspath(flags["out"]) != os.path.abspath(run_dir):
        raise TltkError("--out: not used with --resume; the run continues in RUN_DIR")
    return configure(resume_config(run_dir, recipe), _overrides(**{**flags, "out": None}),
                     **stage_fields)


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--weights", "which", type=click.Choice(["best", "final", "both"]), default="both",
              help="Which saved model(s) to evaluate.")
@click.option("--write", is_flag=True,
              help="Also rewrite the run's metrics.csv and predictions/ (e.g. when damaged).")
def evaluate(run_dir, which, write):
    """Re-evaluate a run's saved models on every split and print the table."""
    from tltk.evaluation.metrics import evaluate_run

    evaluate_run(run_dir, which=which, write=write)


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(), help="Folder for comparison.csv / comparison.md.")
def report(runs, out):
    """Compare RUNs in one table (--out DIR); one RUN also regenerates its report."""
    from tltk.evaluation.reports import compare_runs, to_markdown, write_report

    for path in write_report(runs, out):
        click.echo(f"wrote {path}")
    if out is not None:
        click.echo(to_markdown(compare_runs(runs)))


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Folder for the ensemble's files.")
def ensemble(runs, out):
    """Average the best models of RUNs (same classes and splits) and compare."""
    from tltk.evaluation.ensemble import ensemble_runs
    from tltk.evaluation.reports import to_markdown

    click.echo(to_markdown(ensemble_runs(runs, out)))
    click.echo(f"wrote {out}/metrics.csv, {out}/ensemble.csv, {out}/ensemble.md")


@main.command("predict")
@click.argument("run_dir", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top", type=int, default=5, help="Labels per image.")
@click.option("--weights", type=click.Choice(RUN_WEIGHTS), default="best",
              help="Which saved model of a run predicts.")
@click.option("--format", "fmt", type=click.Choice(PREDICT_FORMATS), default="table",
              help="Output format.")
@click.option("--labels", type=click.Path(), help="Class names of an exported model, one a "
              "line (default: the labels.txt beside it).")
@click.option("--explain", is_flag=True, help="Write a Grad-CAM heatmap of each image.")
@click.option("--explain-dir", default="gradcam", type=click.Path(),
              help="Folder for the --explain heatmaps.")
def predict_command(run_dir, images, top, weights, fmt, labels, explain, explain_dir):
    """Print the top labels of each IMAGE (files or folders, recursively) for a run
    directory or an exported model (.keras, .tflite, SavedModel folder)."""
    from tltk.evaluation.predict import format_predictions, predict_files

    results = predict_files(run_dir, images, top=top, weights=weights, labels=labels,
                            explain=explain_dir if explain else None)
    click.echo(format_predictions(results, fmt))
    failed = [r["path"] for r in results if "error" in r]
    if failed:
        shown = ", ".join(failed[:5]) + (", ..." if len(failed) > 5 else "")
        click.echo(f"{len(failed)} of {len(results)} file(s) could not be read: {shown}",
                   err=True)
        sys.exit(EXIT_PARTIAL)


def _export_format(fmt: str | None, out: str) -> str:
    """--format, or the one --out's suffix names (a folder is a savedmodel).

    Example:
        >>> _export_format(None, "model.tflite"), _export_format(None, "exported/")
        ('tflite', 'savedmodel')
    """
    suffix = os.path.splitext(out.rstrip("/"))[1].lstrip(".").lower()
    named = suffix if suffix in EXPORT_FORMATS else "savedmodel" if not suffix else None
    if fmt is None and named is None:
        raise TltkError(f"--out: cannot tell the format from '{out}'; end it in .keras or "
                        ".tflite, or give --format")
    if fmt is not None and named not in (None, fmt) and suffix:
        raise TltkError(f"--out: '{out}' names a {named} file but --format is {fmt}; "
                        "change one of them")
    return fmt or named


@main.command("export")
@click.argument("run_dir", type=click.Path())
@click.option("--format", "fmt", type=click.Choice([*EXPORT_FORMATS, "all"]),
              help="all: every format and TFLite quantization (default: from --out: .keras, "
                   ".tflite, else a savedmodel folder).")
@click.option("--quantize", type=click.Choice(QUANTIZE),
              default="none", help="TFLite only; int8 is full-integer, calibrated on "
              "training images.")
@click.option("--int8-io", type=click.Choice(INT8_IO), default="uint8",
              help="Input and output type of an int8 TFLite model.")
@click.option("--out", type=click.Path(), help="File (.keras/.tflite) or folder "
              "(savedmodel, all); default: RUN/exports/.")
@click.option("--weights", type=click.Choice(RUN_WEIGHTS), default="best",
              help="Which saved model to export.")
def export_command(run_dir, fmt, quantize, int8_io, out, weights):
    """Export a run's model, measure it on the run's test split, append RUN/exports.csv."""
    from tltk.evaluation.export import TFLiteModel
    from tltk.evaluation.measure import FILE_NAMES, export_and_measure, format_rows

    if fmt is None and out is None:
        raise TltkError("--format: give one (keras, savedmodel, tflite or all), or an --out "
                        "ending in .keras or .tflite")
    if fmt != "all" and out is not None:
        fmt = _export_format(fmt, out)
    if fmt == "all":
        rows = export_and_measure(run_dir, list(FILE_NAMES), out_dir=out, weights=weights,
                                  int8_io=int8_io)
    else:
        rows = export_and_measure(run_dir, [(fmt, quantize)], weights=weights,
                                  int8_io=int8_io, out=out)
    for row in rows:
        click.echo(f"wrote {row['file']}")
        if row["format"] == "tflite":
            click.echo(f"  {TFLiteModel(row['file']).contract()}")
    click.echo(format_rows(rows))
    click.echo(f"{rows[0]['split']} split, {rows[0]['images']} images; appended "
               f"{len(rows)} row(s) to {os.path.join(run_dir, 'exports.csv')}")


full_original_options = _options(
    click.argument("recipe"),
    click.option("--backbone", required=True, help="Backbone whose ImageNet classifier to use "
                 "(a name, or a model file with its 1000-class top)."),
    click.option("--weights", help="Include-top weights file (default: imagenet, Keras' cache)."),
    click.option("--preprocess", type=click.Choice(choices(Preprocess)),
                 help="Input normalisation, for a model file without its own rescaling."),
    click.option("--data", help="Image folder with WordNet-id class folders, or a tfds "
                 "data_dir."),
    click.option("--data-dir", help="tfds data_dir holding prepared tfds datasets."),
    click.option("--image-size", type=int, help="Input size (default: the backbone's)."),
    run_options,
    click.option("--out", required=True, help="Folder for metrics.csv and predictions."))


@main.command("full-original")
@full_original_options
def full_original_command(recipe, **flags):
    """Evaluate a backbone's own 1000-class classifier on RECIPE's data ("Full Original")."""
    from tltk.evaluation.reports import metrics_table, to_markdown, write_run_report
    from tltk.methods.full_original import full_original

    config = _config(recipe, None, flags)
    click.echo(to_markdown(metrics_table(full_original(config))))
    click.echo(f"wrote {config.out}/metrics.csv and {write_run_report(config.out)}")


@main.command("baseline", hidden=True)
@full_original_options
@click.pass_context
def baseline_alias(ctx, recipe, **flags):
    """Deprecated name of `tltk full-original` (the `baseline` recipe is the scratch CNN)."""
    click.echo("note: `tltk baseline` is now `tltk full-original`; the old name will go",
               err=True)
    ctx.invoke(full_original_command, recipe=recipe, **flags)


@main.command("lr-find")
@click.argument("recipe")
@model_options
@data_options
@per_class_option
@run_options
@config_option
@click.option("--stage", help="Stage to test (default: the first).")
@click.option("--steps", type=int, default=100, help="Training steps of the range test.")
@click.option("--start-lr", type=float, default=1e-7, help="Learning rate of the first step.")
@click.option("--end-lr", type=float, default=1.0, help="Learning rate of the last step.")
@click.option("--out", required=True, type=click.Path(), help="Folder for lr_find.csv/.png.")
@set_option
def lr_find(recipe, config_file, stage, steps, start_lr, end_lr, out, sets, **flags):
    """Learning-rate range test for one stage of RECIPE; prints the suggested rate."""
    from tltk.methods.lr_finder import lr_find_config

    config = _config(recipe, config_file, flags, sets)
    result = lr_find_config(config, stage, steps, start_lr, end_lr, out, say=click.echo)
    click.echo(result.summary())


@main.command()
@click.argument("recipe")
@click.option("--backbones", "names", required=True,
              help="Comma-separated backbone names, model files or hub:PRESET_OR_DIR.")
@click.option("--weights", "weight_args", multiple=True, metavar="NAME=PATH",
              help="Weights for one backbone (repeatable); others use the recipe's.")
@data_options
@per_class_option
@run_options
@source_options
@click.option("--cache-dir", help="Feature cache folder (default ~/.cache/tltk/features).")
@click.option("--out", type=click.Path(), help="Folder for rank.csv.")
def rank(recipe, names, weight_args, out, **flags):
    """Rank backbones for RECIPE's data by LogME and H-score of their pooled features
    (and LEEP, for a model file with its own classifier)."""
    from tltk.methods.transferability import rank_backbones

    config = _config(recipe, None, flags)
    weights = {}
    for arg in weight_args:
        name, sep, path = arg.partition("=")
        if not sep or not name or not path:
            raise TltkError(f"--weights: expected NAME=PATH, got '{arg}'")
        weights[name] = path
    backbones = [n.strip() for n in names.split(",") if n.strip()]
    table = rank_backbones(config, backbones, weights, out, say=click.echo)
    formats = {"logme": "{:.4f}".format, "h_score": "{:.3f}".format, "leep": "{:.4f}".format,
               "extract_s": "{:.1f}".format}
    # LEEP is blank ("-") for a backbone without its own classifier.
    click.echo(table.to_string(index=False, formatters=formats, na_rep="-"))


@main.command()
@click.argument("path_a", type=click.Path())
@click.argument("path_b", type=click.Path())
@click.option("--image-size", type=int, default=64, help="Images are resized to this.")
@click.option("--components", type=int, default=50,
              help="PCA components, fitted on both sets together.")
@click.option("--max-images", type=int, default=500,
              help="Seeded sample per set (0: all).")
def distance(path_a, path_b, image_size, components, max_images):
    """Modified Hausdorff distance between two image folders in a shared PCA space.

    Describes how far apart two datasets look; it does not predict transfer gain.
    """
    from tltk.methods.transferability import image_set_distance, load_image_set

    a = load_image_set(path_a, image_size, max_images or None)
    b = load_image_set(path_b, image_size, max_images or None)
    value = image_set_distance(a, b, components)
    click.echo(f"MHD {value:.4f} ({len(a)} vs {len(b)} images at {image_size}px, "
               f"{min(components, len(a) + len(b), a[0].size)} PCA components)")


@main.command()
@click.argument("recipe")
@model_options
@data_options
@click.option("--tuner", default="random",
              help="random | bayesian | hyperband.")
@click.option("--max-trials", type=int, default=10, help="Configurations to try.")
@epochs_options
@per_class_option
@run_options
@config_option
@click.option("--out", type=click.Path(),
              help="Search folder (default runs/tune-<recipe>-<backbone>); rerun to continue.")
@click.option("--overwrite", is_flag=True, help="Start afresh instead of continuing OUT.")
@mixup_option
@set_option
def tune(recipe, config_file, tuner, max_trials, epochs_head, epochs_finetune, out, overwrite,
         mixup, sets, **flags):
    """Search head and fine-tuning hyperparameters for RECIPE with keras-tuner.

    Writes OUT/trials.csv and OUT/best_config.yaml (for `tltk train RECIPE --config`).
    Distributed: set KERASTUNER_TUNER_ID (chief | tuner1, ...), KERASTUNER_ORACLE_IP and
    KERASTUNER_ORACLE_PORT, and run the same command on the chief and every worker.
    """
    from tltk.methods.tuning import tune as run_search

    config = _config(recipe, config_file, flags, sets, epochs_head=epochs_head,
                     epochs_finetune=epochs_finetune, mixup=mixup)
    result = run_search(config, tuner=tuner, max_trials=max_trials, out=out,
                        overwrite=overwrite)
    if result.best_config is not None:
        shown = result.trials.drop(columns=["run_dir"])
        click.echo(shown.to_string(index=False, float_format="{:.4g}".format))
        click.echo(f"wrote {result.out / 'trials.csv'}; retrain the best with: tltk train "
                   f"{recipe} --config {result.out / 'best_config.yaml'}")


@main.command()
@click.argument("recipe")
@model_options
@data_options
@click.option("--per-class", "sizes", default="10,25,50,100,all",
              help="Training images per class to subsample (comma-separated; all = every one).")
@click.option("--freeze", "depths", default="0,1,2,3,all",
              help="Blocks frozen from the bottom while the rest fine-tunes (0 = none).")
@click.option("--repeats", type=int, default=1,
              help="Runs per condition, each with its own subsample and seed.")
@epochs_options
@click.option("--epochs-scratch", type=int, help="Epochs of the scratch baseline (default 40).")
@click.option("--no-scratch", is_flag=True, help="Leave out the from-scratch baseline.")
@run_options
@config_option
@click.option("--out", required=True, type=click.Path(),
              help="Sweep folder (runs/, sweep.csv, sweep.png); rerun to continue.")
@mixup_option
@set_option
def sweep(recipe, sizes, depths, repeats, epochs_head, epochs_finetune, epochs_scratch,
          no_scratch, config_file, out, mixup, sets, **flags):
    """Freeze depth x training-set size grid for RECIPE, plus a scratch baseline per size.

    Prints the mean +- std table and a heuristic; writes OUT/sweep.csv and OUT/sweep.png.
    """
    from tltk.methods.sweep import parse_depths, parse_sizes
    from tltk.methods.sweep import sweep as run_sweep
    from tltk.models.backbones import config_backbone

    config = _config(recipe, config_file, flags, sets, epochs_head=epochs_head,
                     epochs_finetune=epochs_finetune, mixup=mixup)
    result = run_sweep(config, parse_sizes(sizes),
                       parse_depths(depths, config_backbone(config)), repeats, out,
                       scratch=not no_scratch, scratch_epochs=epochs_scratch, say=click.echo)
    click.echo(result.table.to_string(index=False))
    click.echo(result.heuristic)
    click.echo(f"wrote {out}/sweep.csv, {out}/sweep_runs.csv, {out}/sweep.png, {out}/sweep.md")


@main.command()
@click.argument("backbone", required=False)
@source_options
def backbones(backbone, **options):
    """List registered backbones, or show what tltk reads from BACKBONE (a model file or
    hub:PRESET_OR_DIR): blocks, parameters, input size and preprocessing."""
    from tltk.config import BackboneOptions
    from tltk.models.backbones import backbone_table, describe_backbone, get_backbone

    if backbone is None:
        if any(v is not None for v in options.values()):
            raise TltkError("--cut/--blocks/--preprocess: give the BACKBONE they apply to")
        click.echo(backbone_table())
        return
    blocks = options["blocks"]
    opts = BackboneOptions(cut=options["cut"], preprocess=options["preprocess"],
                           blocks=[b.strip() for b in blocks.split(",")] if blocks else None)
    click.echo(describe_backbone(get_backbone(backbone, opts)))


@main.command()
def recipes():
    """List the recipes, one line each."""
    from tltk.recipes import recipe_table

    click.echo(recipe_table())


@main.group("data")
def data_group():
    """Prepare and inspect datasets (see `tltk data prepare --help`, `... describe --help`)."""


@data_group.command("prepare")
@click.argument("dataset", type=click.Choice(["dogs", "dogs-v2", "flowers"]))
@click.option("--data-dir", help="tfds data_dir to build into (default: tfds' own, "
              "~/tensorflow_datasets or $TFDS_DATA_DIR).")
def data_prepare(dataset, data_dir):
    """Download and build DATASET with tfds, ready for `tltk train --data-dir`."""
    from tltk.data.prepare import prepare

    click.echo(f"prepared {dataset} in {prepare(dataset, data_dir)}")


@data_group.command("describe")
@click.argument("dataset")
@click.option("--data", "data_path", help="Image folder (folder dataset).")
@click.option("--data-dir", help="tfds data_dir holding prepared tfds datasets.")
@click.option("--out", required=True, type=click.Path(), help="Folder for the report files.")
@click.option("--split", help="Split protocol, e.g. dogs: default | official.")
@click.option("--val-fraction", type=float, help="Validation fraction (default 0.15).")
@click.option("--test-fraction", type=float, help="Test fraction (default 0.15).")
@click.option("--seed", type=int, default=0, help="Seed of the split and the samples.")
def data_describe(dataset, data_path, data_dir, out, split, val_fraction, test_fraction, seed):
    """Report on DATASET: counts per class and split, image sizes, samples, augmentation."""
    from tltk.data.describe import describe

    files = describe(dataset, out, data=data_path or data_dir, seed=seed, split=split,
                     val_fraction=val_fraction, test_fraction=test_fraction)
    for path in files.values():
        click.echo(path)


@main.command()
@click.argument("data")
@click.option("--recipe", default="folder", show_default=True,
              help="Recipe whose split, image size and feature cache to audit with.")
@model_options
@click.option("--image-size", type=int, help="Input size in pixels (default: backbone's).")
@click.option("--data-dir", help="tfds data_dir, when DATA names a tfds dataset.")
@run_options
@click.option("--threshold", type=float, help="Cosine of pooled features at which two "
              "images are near duplicates (default 0.92, measured on flowers-128).")
@click.option("--out", type=click.Path(), help="Folder for audit.csv and audit.html "
              "(default audit-<data>).")
@set_option
def audit(data, recipe, threshold, out, sets, **flags):
    """Find duplicates, leaks across the split, conflicting labels, likely label errors
    and odd images in DATA (an image folder, or a dataset name such as flowers)."""
    from tltk.methods.audit import FEATURE_THRESHOLD
    from tltk.methods.audit import audit as run_audit

    source = {"data": data} if os.path.isdir(data) else {"dataset": data}
    if not os.path.isdir(data) and data not in ("demo", "flowers", "dogs", "dogs-v2"):
        raise TltkError(f"DATA: {data} is neither a folder nor a dataset name (demo, flowers, "
                        "dogs, dogs-v2); give the image folder's path")
    config = _config(recipe, None, {**flags, **source}, sets)
    if os.path.isdir(data):
        config = config.override({"data.dataset": "folder"})
    name = os.path.basename(os.path.normpath(data))
    run_audit(config, out or f"audit-{name}", threshold or FEATURE_THRESHOLD, say=click.echo)


if __name__ == "__main__":
    main()
