"""The DeepSpeed side of a run: the DeepSpeed config, the engine, and ZeRO-3 construction.

The model is built as single-device code (``models``) and handed to ``deepspeed.initialize``, which
partitions parameters, gradients and optimizer state with ZeRO stage 3. The process group comes
first (``trainer.distributed``), the optimizer and schedule from ``trainer.optim``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from trainer.config import ConfigError, TrainConfig, batch_sizes
from trainer.distributed import import_deepspeed
from trainer.optim import build_optimizer, lr_multiplier

log = logging.getLogger(__name__)


def resolve_precision(precision: str) -> str:
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16" and not torch.cuda.is_available():
        log.warning("bf16 requested without a GPU: DeepSpeed's CPU path runs it, slowly")
    return precision


def build_ds_config(cfg: TrainConfig, world_size: int, hidden_size: int, *, load_universal: bool = False) -> dict[str, Any]:
    """The DeepSpeed config file with the values the trainer owns filled in.

    ``"auto"`` entries are filled from the run's config; explicit values that contradict it are
    refused (DeepSpeed would otherwise silently train with a different batch or clipping).
    ``load_universal``: the engine will load a universal checkpoint (a resume at another number of
    ranks); DeepSpeed reads the flag when the engine is built.
    """
    path = Path(cfg.deepspeed_config)
    if not path.is_file():
        raise ConfigError(f"deepspeed_config {path} does not exist (the repository ships ds_config.json)")
    ds = json.loads(path.read_text())
    o = cfg.optim
    sizes = batch_sizes(o, world_size)
    owned = {
        "train_micro_batch_size_per_gpu": sizes.micro,
        "gradient_accumulation_steps": sizes.accumulation,
        "train_batch_size": sizes.global_batch,
        "gradient_clipping": o.grad_clip,
    }
    problems = [_fill(ds, key, value) for key, value in owned.items()]
    bf16 = resolve_precision(o.precision) == "bf16"
    ds.setdefault("bf16", {})
    problems.append(_fill(ds["bf16"], "enabled", bf16, where="bf16."))
    ds.setdefault("checkpoint", {})
    problems.append(_fill(ds["checkpoint"], "load_universal", load_universal, where="checkpoint."))
    zero = ds.setdefault("zero_optimization", {})
    for key, value in _bucket_sizes(hidden_size).items():
        if zero.get(key, "auto") == "auto":  # sizes are tuning, not contradictions: explicit ones stand
            zero[key] = value
    problems = [p for p in problems if p]
    if problems:
        raise ConfigError(f"{path} contradicts the run's config:\n  - " + "\n  - ".join(problems))
    return ds


def _bucket_sizes(hidden: int) -> dict[str, int]:
    # Sized like one layer's weight matrices: large enough to keep collectives efficient, small
    # enough that prefetching a bucket does not hold more than a layer or two in memory.
    return {
        "reduce_bucket_size": hidden * hidden,
        "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
        "stage3_param_persistence_threshold": 10 * hidden,
    }


def _fill(section: dict, key: str, value: Any, where: str = "") -> str | None:
    current = section.get(key, "auto")
    if current == "auto":
        section[key] = value
        return None
    if current != value:
        return f"{where}{key} is {current!r} there but {value!r} by the run's config; set it to \"auto\" (or to {value!r})"
    return None


def build_engine(model: torch.nn.Module, cfg: TrainConfig, ds_config: dict[str, Any]):
    """``deepspeed.initialize`` with our optimizer and schedule; returns the engine."""
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, cfg))
    engine, _, _, _ = _deepspeed_in_the_group().initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config, dist_init_required=False
    )
    return engine


def zero_init_context(ds_config: dict[str, Any], enabled: bool):
    """Build parameters already partitioned across ranks (for models too large for one device)."""
    return _deepspeed_in_the_group().zero.Init(config_dict_or_path=ds_config, enabled=enabled)


def _deepspeed_in_the_group():
    """DeepSpeed, its communication layer wrapping the process group ``trainer.distributed`` made
    (DeepSpeed reads the world size from that layer, not from torch)."""
    deepspeed = import_deepspeed()
    deepspeed.init_distributed(dist_backend=torch.distributed.get_backend(), verbose=False)
    return deepspeed


def finish_universal_load(engine, universal_dir: Path) -> None:
    """Complete a load from DeepSpeed's universal format, then switch the format off again.

    DeepSpeed's ZeRO-3 universal loader (0.19) restores the weights and both Adam moments of every
    parameter, but (1) gives every parameter group the hyperparameters of the first (the groups
    without weight decay would decay, the heads would lose their learning-rate factor) and (2) hands
    every sub-group the same ``step`` tensor, which each sub-group's update then advances (Adam's
    bias correction would count several steps per step). The groups' own values are in the
    universal folder's optimizer state (written by DeepSpeed's converter); each sub-group gets its
    own step. Saving while the flag is set writes only rank 0's model states, so it is cleared here,
    before the next save (the engine reads it through its config on every load and save).
    """
    from deepspeed.checkpoint.constants import OPTIMIZER_STATE_DICT, PARAM_GROUPS

    zero = engine.optimizer
    # DeepSpeed's own file; its loader reads it the same way the line before this one ran.
    saved = torch.load(universal_dir / "zero" / "optimizer_state.pt", map_location="cpu", weights_only=False)
    groups = saved[OPTIMIZER_STATE_DICT][PARAM_GROUPS]
    if len(groups) != len(zero.optimizer.param_groups):
        raise RuntimeError(f"{universal_dir}: {len(groups)} optimizer parameter groups saved, {len(zero.optimizer.param_groups)} built")
    for group, saved_group in zip(zero.optimizer.param_groups, groups):
        group.update({k: v for k, v in saved_group.items() if k != "params"})
    for flat in zero.fp32_partitioned_groups_flat:
        state = zero.optimizer.state[flat]
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()
    engine._config.load_universal_checkpoint = False
