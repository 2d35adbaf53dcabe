"""The DeepSpeed side of a run: the DeepSpeed config, the engine, and ZeRO-3 construction.

The model is built as single-device code (``models``) and handed to ``deepspeed.initialize``, which
partitions parameters, gradients and optimizer state with ZeRO stage 3. The process group comes
first (``trainer.distributed``), the optimizer and schedule from ``trainer.optim``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from videobert.trainer.config import DEFAULT_DEEPSPEED_CONFIG, ConfigError, TrainConfig, batch_sizes, shipped_file
from videobert.trainer.distributed import import_deepspeed
from videobert.trainer.optim import build_optimizer, lr_multiplier

log = logging.getLogger(__name__)


def resolve_precision(precision: str) -> str:
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16" and not torch.cuda.is_available():
        log.warning("bf16 requested without a GPU: DeepSpeed's CPU path runs it, slowly")
    return precision


def build_ds_config(cfg: TrainConfig, world_size: int, hidden_size: int) -> dict[str, Any]:
    """The DeepSpeed config file with the values the trainer owns filled in.

    ``"auto"`` entries are filled from the run's config; explicit values that contradict it are
    refused (DeepSpeed would otherwise silently train with a different batch or clipping). A resume at
    another number of ranks re-partitions the ZeRO-3 state itself (``trainer.reshard``), so DeepSpeed's
    universal-checkpoint load stays off.
    """
    path = Path(cfg.deepspeed_config) if cfg.deepspeed_config else shipped_file(DEFAULT_DEEPSPEED_CONFIG)
    if not path.is_file():
        raise ConfigError(f"deepspeed_config {path} does not exist (empty: the ds_config.json installed with videobert)")
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
    problems.append(_fill(ds["checkpoint"], "load_universal", False, where="checkpoint."))
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
    first = not deepspeed.comm.is_initialized()
    deepspeed.init_distributed(dist_backend=torch.distributed.get_backend(), verbose=False)
    if first:
        unlink_shm_buffer()
    return deepspeed


def unlink_shm_buffer() -> None:
    """DeepSpeed's CPU communication op (0.19) gives each rank of a one-machine job a shared-memory
    buffer, ``/dev/shm/deepspeed_allreduce_buffer_{uid}_{MASTER_ADDR}_{MASTER_PORT}_{rank}`` (tens of
    MB), that it never unlinks: every run would leave its ranks' buffers in memory until the machine
    restarts. Every rank maps every other rank's buffer during the initialisation, so once all ranks
    are past it (the barrier) each unlinks its own name; the mappings stay valid until the process
    ends, and the memory is freed then."""
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{torch.distributed.get_rank()}")
    if torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()
    (Path("/dev/shm") / name).unlink(missing_ok=True)
