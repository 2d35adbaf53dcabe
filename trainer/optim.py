"""The optimizer and the learning-rate schedule of a run."""

from __future__ import annotations

import math

import torch

from videobert.trainer.config import TrainConfig


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; biases and LayerNorm weights are not decayed (as BERT). Parameters the pretrained
    checkpoint lacked or never trained (``model.new_parameter_names``) learn at
    ``optim.new_parameters_lr_multiplier`` x lr."""
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
    # The fused kernel (CUDA and CPU): one pass over each flat ZeRO partition instead of a dozen
    # element-wise passes; on two CPU cores it takes the demo's step from about 0.45 s to 0.04 s.
    return torch.optim.AdamW(param_groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=True)


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
