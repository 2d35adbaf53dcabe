"""Checkpoints that resume exactly and that a killed save can never corrupt.

The files of a checkpoint folder are named in ``trainer.run_folder``.

A folder without ``COMPLETE`` does not exist as far as resuming is concerned: a save killed at any
moment leaves the previous complete checkpoint as the one ``--resume auto`` picks. After a new
checkpoint completes, complete ones beyond the newest ``keep_last`` and incomplete leftovers are
deleted. Rank 0 decides what to resume and broadcasts it, so all ranks load the same step.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from trainer.config import TrainConfig, save_config
from trainer.data import StreamPosition
from trainer.run_folder import (
    COMPLETE, LATEST, CheckpointFolder, latest_complete, step_dirs, write_json, write_text_atomic,
)

log = logging.getLogger(__name__)


@dataclass
class TrainerState:
    """What the trainer needs beyond the engine to continue exactly where it stopped (per rank)."""

    step: int = 0
    """Optimizer steps taken."""
    samples: int = 0
    """Examples trained on, all ranks."""
    tokens: int = 0
    """Non-padding tokens trained on, all ranks."""
    segments: int = 0
    """Caption segments read into examples, all ranks."""
    skipped_steps: int = 0
    """Micro-batches dropped for a non-finite loss."""
    bad_samples: int = 0
    """Unreadable samples skipped by this rank's streams."""
    batches_consumed: int = 0
    """Batches this rank took from its loader (fixes the loader's worker turn order on resume)."""
    positions: dict[int, StreamPosition] = field(default_factory=dict)
    """This rank's data streams: stream index -> (epoch, items consumed)."""
    codebook_hash: str = ""
    world_size: int = 1
    num_streams: int = 1

    def to_json(self) -> str:
        d = asdict(self)
        d["positions"] = {str(k): asdict(v) for k, v in self.positions.items()}
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainerState":
        d = json.loads(text)
        d["positions"] = {int(k): StreamPosition(**v) for k, v in d.get("positions", {}).items()}
        return cls(**d)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_checkpoint(engine, root: Path, state: TrainerState, config: TrainConfig, model_config: dict[str, Any],
                    rank: int, keep_last: int) -> Path:
    """Collective: every rank calls it. Returns the completed folder."""
    ckpt = CheckpointFolder(root / CheckpointFolder.name_of(state.step))
    folder = ckpt.path
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if folder.exists():
            shutil.rmtree(folder)  # an earlier attempt at this step that never completed
    _barrier()
    engine.save_checkpoint(str(root), tag=folder.name, save_latest=False)
    ckpt.trainer_state(rank).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(ckpt.trainer_state(rank), state.to_json())
    torch.save(_rng_state(), ckpt.rng_state(rank))
    _barrier()
    if rank == 0:
        save_config(config, ckpt.config)
        write_json(ckpt.model_config, model_config)
        write_json(ckpt.complete_marker, {"step": state.step, "world_size": state.world_size, "time": time.time()})
        write_text_atomic(root / LATEST, folder.name)
        prune(root, keep_last)
    _barrier()
    return folder


def prune(root: Path, keep_last: int) -> None:
    """Delete complete checkpoints beyond the newest ``keep_last`` and incomplete ones older than them."""
    dirs = step_dirs(root)
    complete = [s for s, p in dirs if CheckpointFolder(p).is_complete()]
    if not complete:
        return
    keep = set(complete[-keep_last:])
    newest = complete[-1]
    for step, path in dirs:
        if step in keep or (step > newest):
            continue
        shutil.rmtree(path, ignore_errors=True)


def resolve_resume(root: Path, resume: str, rank: int) -> Path | None:
    """The folder to resume from (decided on rank 0, broadcast), or None to start fresh."""
    choice: list[Any] = [None]
    if rank == 0:
        choice[0] = _choose(root, resume)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(choice, src=0)
    return Path(choice[0]) if choice[0] else None


def _choose(root: Path, resume: str) -> str | None:
    if resume == "none":
        return None
    if resume == "auto":
        found = latest_complete(root)
        return str(found) if found else None
    path = Path(resume) if Path(resume).is_absolute() or Path(resume).exists() else root / resume
    if not CheckpointFolder(path).is_complete():
        raise FileNotFoundError(f"checkpoint.resume={resume!r}: {path} is not a complete checkpoint (no {COMPLETE} marker)")
    return str(path)


def load_checkpoint(engine, folder: Path, rank: int, world_size: int) -> TrainerState:
    """Collective: load the engine state and this rank's trainer state and RNG."""
    ckpt = CheckpointFolder(folder)
    marker = ckpt.marker()
    if marker["world_size"] != world_size:
        raise RuntimeError(
            f"{folder} was written by {marker['world_size']} ranks and this job has {world_size}: "
            "resume with the same number of ranks (re-sharding to another world size is not supported yet)"
        )
    load_path, _ = engine.load_checkpoint(
        str(folder.parent), tag=folder.name, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the engine state from {folder}")
    state = TrainerState.from_json(ckpt.trainer_state(rank).read_text(encoding="utf-8"))
    _set_rng_state(torch.load(ckpt.rng_state(rank), weights_only=True))
    return state


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class StopSignals:
    """Turns SIGTERM/SIGINT into a request to checkpoint and stop at the next step boundary."""

    def __init__(self) -> None:
        self.requested = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.requested = signum
        log.warning("received %s: saving a checkpoint and stopping after this step", signal.Signals(signum).name)


def consolidated_model(folder: Path):
    """The model of a complete checkpoint as one fp32 single-device module (no process group needed):
    DeepSpeed's ZeRO partitions of every rank are gathered from the files."""
    from models.config import VideoBertConfig
    from models.videobert import VideoBertForPreTraining
    from trainer.distributed import import_deepspeed

    ckpt = CheckpointFolder(Path(folder))
    if not ckpt.is_complete():
        raise FileNotFoundError(f"{ckpt.path} is not a complete checkpoint (no {COMPLETE} marker)")
    config = VideoBertConfig.from_dict(json.loads(ckpt.model_config.read_text(encoding="utf-8")))
    model = VideoBertForPreTraining(config)
    import_deepspeed()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.path.parent), tag=ckpt.path.name)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not _tied(model, k)]:
        raise RuntimeError(f"{ckpt.path}: checkpoint does not fit the model (missing {missing}, unexpected {unexpected})")
    return model.eval()


def _tied(model, name: str) -> bool:
    # A tied weight is saved once; its other name is legitimately absent from the state dict.
    params = dict(model.named_parameters(remove_duplicate=False))
    unique = dict(model.named_parameters())
    return name in params and name not in unique
