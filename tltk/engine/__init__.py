"""The training engine: one lifecycle, run -> stage -> fit.

A *run* is one `RunConfig` turned into one run directory; a *stage* is one `fit`
with its own optimizer, unfreezing and cache choice. The public API, for tools that
drive runs their own way (the tuner, the LR finder, the sweep, benchmarks), in the
spirit of keras-tuner's `HyperModel.build` / `HyperModel.fit`:

- `train(config) -> RunResult`: the whole lifecycle;
- `prepare(config, spec) -> Context`: data, model and run directory, no training
  (a resumed run is restored here);
- `run_stage(ctx, stage)`: one stage (freezing, caching choice, fitting);
- `finish(ctx) -> RunResult`: save final.keras, evaluate best and final weights;
- `end_run(ctx)`: mark a run complete without evaluating it.

Modules: `run` (the lifecycle), `stage` (one stage), `checkpoint` (epoch commits,
resume, rollback), `streams` (seeded epoch streams), `callbacks`, `features` (the
feature cache) and `runtime` (precision, determinism, distribution strategy).

Example::

    from tltk import engine
    ctx = engine.prepare(config, config_backbone(config))
    for stage in ctx.config.stages:
        engine.run_stage(ctx, stage)
    result = engine.finish(ctx)
"""

from tltk.engine.checkpoint import resume_config
from tltk.engine.run import Context, RunResult, end_run, finish, prepare, train
from tltk.engine.stage import run_stage

__all__ = ["Context", "RunResult", "end_run", "finish", "prepare", "resume_config",
           "run_stage", "train"]
