"""Stage generators for gradual unfreezing and chain-thaw.

* Gradual unfreezing (Howard & Ruder 2018, ULMFiT): train the new head with the
  backbone frozen, then unfreeze one more block per stage from the top
  (`unfreeze=1`, `2`, ...), so the most general, lowest features change last.
* Chain-thaw (Felbo et al. 2017, DeepMoji): train the head alone, then fine-tune one
  block at a time with every other block frozen (`unfreeze=[name]`), starting from
  the lowest block, and finally train everything (`unfreeze="all"`).

Both return plain `StageConfig` lists for a `RunConfig`; any other stage field
(`momentum`, `schedule`, `block_lr_decay`, `augment`, ...) is passed to every stage.

Example::

    spec = get_backbone("vgg16")
    stages = gradual_unfreezing(3, epochs_per_stage=2, optimizer="sgd", lr=1e-3,
                                momentum=0.9)
    [(s.name, s.unfreeze) for s in stages]
    # [('head', 0), ('unfreeze-1', 1), ('unfreeze-2', 2), ('unfreeze-3', 3)]
    config = RunConfig(backbone="vgg16", stages=stages)
"""

from __future__ import annotations

from dataclasses import asdict, replace

from tltk.config import RunConfig, StageConfig
from tltk.errors import TltkError
from tltk.models.backbones import config_backbone, resolve_unfreeze


def _stage(name: str, epochs: int, unfreeze, fields: dict) -> StageConfig:
    try:
        return StageConfig(name=name, epochs=epochs, unfreeze=unfreeze, **fields)
    except TypeError as exc:  # an unknown stage field
        raise TltkError(f"stage fields: {exc}; see StageConfig for the valid fields") from None


def _check_epochs(epochs_per_stage: int, head_epochs: int | None) -> int:
    head_epochs = epochs_per_stage if head_epochs is None else head_epochs
    if epochs_per_stage < 1 or head_epochs < 0:
        raise TltkError(f"epochs_per_stage must be at least 1 and head_epochs at least 0, "
                        f"got {epochs_per_stage} and {head_epochs}")
    return head_epochs


def gradual_unfreezing(blocks: int, epochs_per_stage: int, optimizer: str = "adam",
                       lr: float = 1e-4, *, head_epochs: int | None = None,
                       head_lr: float | None = None, **stage_fields) -> list[StageConfig]:
    """A head stage, then stages unfreezing the top 1, 2, ..., `blocks` blocks.

    `head_epochs` (default `epochs_per_stage`; 0 skips the head stage) and `head_lr`
    (default `lr`) set the frozen-backbone stage.

    Example:
        >>> [s.unfreeze for s in gradual_unfreezing(2, 1, head_epochs=0)]
        [1, 2]
    """
    head_epochs = _check_epochs(epochs_per_stage, head_epochs)
    if blocks < 1:
        raise TltkError(f"gradual unfreezing needs at least one block, got {blocks}")
    common = {"optimizer": optimizer, **stage_fields}
    stages = [_stage("head", head_epochs, 0, {**common, "lr": head_lr or lr})] \
        if head_epochs else []
    stages += [_stage(f"unfreeze-{n}", epochs_per_stage, n, {**common, "lr": lr})
               for n in range(1, blocks + 1)]
    return stages


def chain_thaw(block_names: list[str], epochs_per_stage: int, optimizer: str = "adam",
               lr: float = 1e-4, *, head_epochs: int | None = None,
               head_lr: float | None = None, final_epochs: int | None = None,
               bottom_up: bool = True, **stage_fields) -> list[StageConfig]:
    """Head alone, then each named block alone, then the whole network.

    `block_names` are given top-down, as backbone specs list them; blocks are thawed
    from the lowest up unless `bottom_up=False`. `final_epochs` (default
    `epochs_per_stage`) sets the closing all-layers stage.

    Example:
        >>> [s.unfreeze for s in chain_thaw(["block5", "block4"], 1)]
        [0, ['block4'], ['block5'], 'all']
    """
    head_epochs = _check_epochs(epochs_per_stage, head_epochs)
    final_epochs = epochs_per_stage if final_epochs is None else final_epochs
    if not block_names or isinstance(block_names, str):
        raise TltkError("chain-thaw needs a list of block names, e.g. spec.blocks[:4]")
    if len(set(block_names)) != len(block_names):
        raise TltkError(f"chain-thaw: block names repeat in {list(block_names)}")
    common = {"optimizer": optimizer, "lr": lr, **stage_fields}
    order = list(reversed(block_names)) if bottom_up else list(block_names)
    stages = [_stage("head", head_epochs, 0, {**common, "lr": head_lr or lr})] \
        if head_epochs else []
    stages += [_stage(f"thaw-{name}", epochs_per_stage, [name], common) for name in order]
    if final_epochs:
        stages.append(_stage("thaw-all", final_epochs, "all", common))
    return stages


METHODS = ("gradual", "chain-thaw")


def require_head_stage(config: RunConfig, spec, option: str) -> None:
    """Stop unless the backbone is pretrained and the first of several stages trains
    the head alone (what gradual unfreezing, chain-thaw and `tltk sweep` build on)."""
    if (len(config.stages) < 2 or resolve_unfreeze(spec, config.stages[0].unfreeze)
            or not spec.pretrained):
        raise TltkError(f"{option}: needs a pretrained backbone and a recipe whose first "
                        "stage trains the head on the frozen backbone, followed by tuning "
                        f"stages (e.g. folder, flowers); got backbone {spec.name} and stages "
                        f"{[s.name for s in config.stages]}")


def restage(config: RunConfig, method: str, blocks: int = 3) -> RunConfig:
    """`config` with its tuning stages replaced by gradual unfreezing or chain-thaw.

    The first stage (the head on the frozen backbone) is kept. The last stage is the
    template of every new one: its epochs, optimizer, learning rate and other fields
    apply per stage. `blocks` is how many blocks, from the top, are thawed.

    Example:
        >>> from tltk.recipes import folder
        >>> cfg = restage(folder.config(), "gradual", blocks=2)
        >>> [(s.name, s.unfreeze) for s in cfg.stages]
        [('bottleneck', 0), ('unfreeze-1', 1), ('unfreeze-2', 2)]
    """
    if method not in METHODS:
        raise TltkError(f"--unfreezing: expected one of {', '.join(METHODS)}, got '{method}'")
    spec = config_backbone(config)
    require_head_stage(config, spec, "--unfreezing")
    head, template = config.stages[0], config.stages[-1]
    if not 1 <= blocks <= len(spec.blocks):
        raise TltkError(f"--unfreeze-blocks: {spec.name} has {len(spec.blocks)} blocks; "
                        f"give 1 to {len(spec.blocks)} (got {blocks})")
    fields = {k: v for k, v in asdict(template).items()
              if k not in ("name", "epochs", "unfreeze")}
    if method == "gradual":
        stages = gradual_unfreezing(blocks, template.epochs, head_epochs=0, **fields)
    else:
        stages = chain_thaw(spec.blocks[:blocks], template.epochs, head_epochs=0, **fields)
    return replace(config, stages=[head, *stages])
