"""Train like ``videobert train`` and record the engine's whole state right after resuming and at the end.

Started by the elastic tests (under torchrun for several ranks):

    python tests/trainer/elastic_probe.py OUT [section.field=value ...]

writes ``OUT/probe-rank-N.pt`` per rank: ``start`` (after ``Trainer.resume``; absent for a fresh run)
and ``end`` (after training, i.e. what the last checkpoint holds), each with the full fp32 master
weights and both Adam moments of every parameter (gathered from the ZeRO-3 partitions), the
optimizer's step of each sub-group, the parameter groups' learning rate and weight decay, the
schedule's position, the RNG state and whether the MLM decoder still shares the word table; and
``first`` (the inputs and loss of this rank's first micro-batch after resuming).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from videobert.trainer.config import load_config  # noqa: E402
from videobert.trainer.distributed import import_deepspeed, init_distributed, leave_distributed  # noqa: E402
from videobert.trainer.train import Trainer  # noqa: E402


def engine_state(trainer: Trainer) -> dict:
    """Collective: the engine's full state, the same on every rank (its RNG aside)."""
    import_deepspeed()
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    engine, zero = trainer.engine, trainer.engine.optimizer
    state = {"rng": torch.get_rng_state()}
    for name, param in engine.module.named_parameters():
        state[f"fp32/{name}"] = safe_get_full_fp32_param(param).detach().cpu().clone()
        for key in ("exp_avg", "exp_avg_sq"):
            state[f"{key}/{name}"] = safe_get_full_optimizer_state(param, key).detach().cpu().clone()
    state["steps"] = [float(zero.optimizer.state[flat]["step"]) for flat in zero.fp32_partitioned_groups_flat]
    state["groups"] = [[float(g["lr"]), float(g["weight_decay"])] for g in zero.optimizer.param_groups]
    state["schedule"] = [float(engine.lr_scheduler.last_epoch), *map(float, engine.lr_scheduler.get_last_lr())]
    module = engine.module
    state["tied"] = module.mlm_head.decoder.weight is module.embeddings.word.weight
    return state


def capture_first_forward(trainer: Trainer, record: dict) -> None:
    def hook(module, args, kwargs, output):
        if "first" not in record:
            record["first"] = {"inputs": {k: v.detach().cpu() for k, v in kwargs.items()},
                               "loss": float(output.loss.detach())}

    trainer.engine.module.register_forward_hook(hook, with_kwargs=True)


def main(out: str, overrides: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(ROOT / "launch/recipes/debug.yaml", overrides)
    info = init_distributed(cfg.dist_timeout_s)
    trainer = Trainer(cfg, info)
    record: dict = {}
    if trainer.resume():
        record["start"] = engine_state(trainer)
    capture_first_forward(trainer, record)
    trainer.train()
    record["end"] = engine_state(trainer)
    Path(out).mkdir(parents=True, exist_ok=True)
    torch.save(record, Path(out) / f"probe-rank-{info.rank}.pt")
    leave_distributed(info, True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
