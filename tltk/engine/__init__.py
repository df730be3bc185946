"""The training engine: one lifecycle, run -> stage -> fit.

A *run* is one `RunConfig` turned into one run directory; a *stage* is one `fit`
with its own optimizer, unfreezing and cache choice. The public API, for tools that
drive runs their own way (the tuner, the LR finder, the sweep, benchmarks), in the
spirit of keras-tuner's `HyperModel.build` / `HyperModel.fit`:

- `train(config) -> RunResult`: the whole lifecycle;
- `prepare(config, spec) -> Context`: data, model and run directory, no training
  (a resumed run is restored here);
- `plan_stage(ctx, stage) -> StagePlan`: how a stage trains (blocks, cache, model
  view, loss, labels, augmentation, optimizer); `run_stage`, the dry run and the LR
  finder all train from it;
- `run_stage(ctx, stage)`: one stage (its plan, then fitting);
- `finish(ctx) -> RunResult`: save final.keras, evaluate best and final weights;
- `end_run(ctx)`: mark a run complete without evaluating it.

Modules: `run` (the lifecycle), `context` (what the stages share), `stage` (one stage),
`dryrun` (the plan with timed batches), `checkpoint` (epoch commits,
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
from tltk.engine.context import Context
from tltk.engine.run import RunResult, end_run, finish, prepare, train
from tltk.engine.stage import StagePlan, plan_stage, run_stage

__all__ = ["Context", "RunResult", "StagePlan", "end_run", "finish", "plan_stage", "prepare",
           "resume_config", "run_stage", "train"]
