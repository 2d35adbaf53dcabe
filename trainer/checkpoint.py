"""Checkpoints that resume exactly, on any number of ranks, and that a killed save can never corrupt.

The files of a checkpoint folder are named in ``trainer.run_folder``.

Saving. Every rank writes into ``.step-N.partial``; once every rank's files (DeepSpeed's included)
and the folder are fsynced, rank 0 writes ``COMPLETE`` and renames the folder to ``step-N``. A
complete ``step-N`` that a newer save of the same step replaces is first renamed out of the way and
deleted only after its replacement is in place; a save killed between those renames is finished
when the run starts again (``recover_interrupted_saves``). So a folder without ``COMPLETE`` never
counts, and a complete checkpoint is never lost to a save that did not complete. After a save,
complete checkpoints beyond the newest ``keep_last`` are deleted.

What a checkpoint holds is the state at an optimizer-step boundary: a save in the middle of a step
(the stop after a run of non-finite losses) records the trainer state and RNG of the last boundary,
so its data position is never ahead of the optimizer state it sits beside.

Resuming. Rank 0 picks the folder (``checkpoint.resume``) and all ranks read its record. A
checkpoint of the same number of ranks loads directly. One written by another number of ranks is
re-partitioned as it loads (``trainer.reshard``): each rank builds its own ZeRO-3 pieces of the fp32
master weights and both Adam moments from the old ranks' files (reading only what it needs) and
DeepSpeed's loader takes them with the optimizer's step, the per-group hyperparameters and the
learning-rate schedule; nothing is converted or written beside the checkpoint. The trainer state of
every old rank is merged into the new ranks' (``merged_state``): the data position is re-partitioned
exactly once (``trainer.data``), the counters' totals go to rank 0. RNG: a rank that the checkpoint
had resumes its saved generators; a rank it did not have seeds them from (seed, rank, step).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from videobert.models.config import VideoBertConfig
from videobert.models.errors import VideoBertError
from videobert.models.videobert import VideoBertForPreTraining
from videobert.models.visual.codebook import CodebookError
from videobert.trainer.build import ARCHITECTURE_KEYS, MODEL_KEYS
from videobert.trainer.config import ConfigError, TrainConfig, save_config
from videobert.trainer.data import EpochPhase, History, StreamPosition, repartition
from videobert.trainer.distributed import gather_lists, import_deepspeed, world
from videobert.trainer.integrity import checksums, describe_write_failure, problems_in_share, recorded, written_by
from videobert.trainer.mixing import merged_mix
from videobert.trainer.reshard import ReshardError, load_resharded, optimizer_files
from videobert.trainer.run_folder import (
    COMPLETE, LATEST, PARTIAL, REPLACED, CheckpointFolder, files_under, fsync_file, fsync_folder, staged_dirs,
    step_dirs, write_json, write_text_atomic,
)

log = logging.getLogger(__name__)



class CheckpointError(VideoBertError, RuntimeError):
    """A checkpoint that this run cannot resume from; the message says what, where, and the fix."""


@dataclass
class TrainerState:
    """What the trainer needs beyond the engine to continue exactly where it stopped (per rank)."""

    step: int = 0
    """Optimizer steps taken."""
    samples: int = 0
    """Examples this rank trained on (after a change of world size, rank 0 carries the old totals)."""
    tokens: int = 0
    """Non-padding tokens this rank trained on."""
    segments: int = 0
    """Caption segments this rank read into examples."""
    skipped_steps: int = 0
    """Micro-batches this rank dropped for a non-finite loss."""
    bad_samples: int = 0
    """Unreadable samples skipped by this rank's streams."""
    batches_consumed: int = 0
    """Batches this rank took from its loader since the layout last changed (fixes the loader's
    worker turn order on resume)."""
    positions: dict[int, StreamPosition] = field(default_factory=dict)
    """This rank's data streams: stream index -> (epoch, items consumed)."""
    history: History = ()
    """Epochs begun under earlier layouts of the job (``trainer.data.repartition``), the same on all ranks."""
    codebook_hash: str = ""
    world_size: int = 1
    num_streams: int = 1
    mix: dict[str, Any] = field(default_factory=dict)
    """With corpora mixed by weight: each stream's position in every source, and each source's history
    of layouts (``trainer.mixing``; plain JSON)."""

    def to_json(self) -> str:
        d = asdict(self)
        d["positions"] = {str(k): asdict(v) for k, v in self.positions.items()}
        d["history"] = {str(e): [p.to_dict() for p in phases] for e, phases in self.history}
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainerState":
        d = json.loads(text)
        d["positions"] = {int(k): StreamPosition(**v) for k, v in d.get("positions", {}).items()}
        history = d.get("history", {})
        d["history"] = tuple(sorted((int(e), tuple(EpochPhase.from_dict(p) for p in ps)) for e, ps in history.items()))
        return cls(**d)


COUNTERS = ("samples", "tokens", "segments", "skipped_steps", "bad_samples")
"""Per-rank counters whose sum over the ranks is the job's."""


@dataclass
class Snapshot:
    """The trainer state and this rank's RNG at an optimizer-step boundary: what a checkpoint records."""

    state: TrainerState
    rng: dict[str, torch.Tensor]

    @classmethod
    def take(cls, state: TrainerState) -> "Snapshot":
        return cls(copy.deepcopy(state), _rng_state())


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ---------------------------------------------------------------------------------------------
# saving


def save_checkpoint(engine, root: Path, snapshot: Snapshot, config: TrainConfig, model_config: dict[str, Any],
                    rank: int, keep_last: int, stopped: str = "") -> Path:
    """Collective: every rank calls it. Returns the completed folder. ``stopped``: why training could
    not go on when this save was made (recorded in the marker; a resume reports it)."""
    step = snapshot.state.step
    staged = CheckpointFolder(root / CheckpointFolder.staged_name_of(step, PARTIAL))
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        recover_interrupted_saves(root)
        shutil.rmtree(staged.path, ignore_errors=True)
    _barrier()
    with _naming_write_failures(staged.path):
        engine.save_checkpoint(str(root), tag=staged.path.name, save_latest=False)
        staged.trainer_state(rank).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(staged.trainer_state(rank), snapshot.state.to_json())
        torch.save(snapshot.rng, staged.rng_state(rank))
        if rank == 0:
            save_config(config, staged.config)
            write_json(staged.model_config, model_config)
        _fsync_own_files(staged, rank)
    _barrier()
    files = recorded(gather_lists(checksums(staged.path, written_by(staged.path, rank))))
    if rank == 0:
        with _naming_write_failures(staged.path):
            _fsync_tree(staged.path)
            marker = {"step": step, "world_size": snapshot.state.world_size, "num_streams": snapshot.state.num_streams,
                      "time": time.time(), "files": files}
            write_json(staged.complete_marker, marker | ({"stopped": stopped} if stopped else {}))
            install(root, step)
            write_text_atomic(root / LATEST, CheckpointFolder.name_of(step))
        prune(root, keep_last)
    _barrier()
    return root / CheckpointFolder.name_of(step)


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (the device full, most often); the complete ones are intact."""

    exit_status = 1


@contextlib.contextmanager
def _naming_write_failures(folder: Path):
    try:
        yield
    except (OSError, RuntimeError) as e:
        raise CheckpointWriteError(describe_write_failure(folder, e)) from e


def _fsync_own_files(ckpt: CheckpointFolder, rank: int) -> None:
    """Each rank makes the files it wrote durable (on shared storage only the writer can)."""
    for path in written_by(ckpt.path, rank):
        fsync_file(path)


def _fsync_tree(folder: Path) -> None:
    """Every file below ``folder``, then every folder (deepest first), on disk."""
    files = files_under(folder)
    # fsync waits for the device and releases the GIL: overlapping the waits costs one or two
    # device flushes instead of one per file.
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(fsync_file, files))
        folders = sorted({p.parent for p in files} | {folder}, key=lambda p: -len(p.parts))
        list(pool.map(fsync_folder, folders))


def install(root: Path, step: int) -> None:
    """Rename the complete ``.step-N.partial`` to ``step-N``; a complete ``step-N`` it replaces is
    moved aside first and deleted only once the new one is in place."""
    final = root / CheckpointFolder.name_of(step)
    partial = root / CheckpointFolder.staged_name_of(step, PARTIAL)
    replaced = root / CheckpointFolder.staged_name_of(step, REPLACED)
    if final.exists():
        shutil.rmtree(replaced, ignore_errors=True)
        os.rename(final, replaced)
        fsync_folder(root)
    os.rename(partial, final)
    fsync_folder(root)
    shutil.rmtree(replaced, ignore_errors=True)


def recover_interrupted_saves(root: Path) -> None:
    """Finish the renames of a save killed after its folder completed; delete what never completed.
    Runs on rank 0 while no rank writes (before resuming, before saving)."""
    for step, kind, path in staged_dirs(root):
        if kind == PARTIAL and CheckpointFolder(path).is_complete():
            log.warning("%s was complete but not yet in place: installing it as step-%d", path, step)
            install(root, step)
        elif kind == PARTIAL:
            shutil.rmtree(path, ignore_errors=True)
    for step, kind, path in staged_dirs(root):
        final = CheckpointFolder(root / CheckpointFolder.name_of(step))
        if not final.is_complete() and CheckpointFolder(path).is_complete():
            log.warning("restoring %s as %s (its replacement never completed)", path, final.path)
            shutil.rmtree(final.path, ignore_errors=True)
            os.rename(path, final.path)
            fsync_folder(root)
        else:
            shutil.rmtree(path, ignore_errors=True)


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


# ---------------------------------------------------------------------------------------------
# choosing what to resume


@dataclass(frozen=True)
class ResumePlan:
    """The checkpoint a run resumes from, decided before the engine is built."""

    folder: Path
    world_size: int
    """Ranks that wrote it."""
    num_streams: int
    """Data streams per rank it recorded."""
    ranks: int
    """Ranks of this job."""

    @property
    def other_world_size(self) -> bool:
        """Whether the engine state is re-partitioned as it loads (``trainer.reshard``)."""
        return self.world_size != self.ranks


def plan_resume(root: Path, resume: str, rank: int, ranks: int, model_config: dict[str, Any],
                codebook) -> ResumePlan | None:
    """Collective: choose the checkpoint (rank 0 decides), verify its files against the checksums of
    its marker (``resume=auto`` falls back to the newest intact one), and check that this run can
    continue it (at another number of ranks: that every old rank's optimizer file is there)."""
    candidates = _decided_by_rank0(lambda: _choose(root, resume), rank)
    ckpt = _first_intact([CheckpointFolder(Path(c)) for c in candidates], explicit=resume != "auto", rank=rank)
    if ckpt is None:
        return None
    marker = ckpt.marker()
    if marker.get("stopped") and rank == 0:
        log.warning("%s was saved when training stopped: %s", ckpt.path, marker["stopped"])
    plan = ResumePlan(folder=ckpt.path, world_size=int(marker["world_size"]),
                      num_streams=int(marker.get("num_streams", _streams_of(ckpt))), ranks=ranks)
    _decided_by_rank0(lambda: _check_fits(ckpt, model_config, codebook, plan), rank)
    return plan


def _first_intact(candidates: list[CheckpointFolder], explicit: bool, rank: int) -> CheckpointFolder | None:
    """Collective: the first of ``candidates`` (newest first) whose files match its marker."""
    damaged = []
    for ckpt in candidates:
        problems = damage(ckpt)
        if not problems:
            return ckpt
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        if explicit:
            raise CheckpointError(f"checkpoint.resume: {ckpt.path} is damaged and refused: {problems[0]}{more}; "
                                  "resume from an older checkpoint (checkpoint.resume=step-N) or checkpoint.resume=auto")
        if rank == 0:
            log.warning("%s is damaged and skipped: %s%s; trying the checkpoint before it", ckpt.path, problems[0], more)
        damaged.append(ckpt.path.name)
    if damaged:
        raise CheckpointError(f"every complete checkpoint is damaged ({', '.join(damaged)}; see the warnings above): "
                              "restore one, or start over with checkpoint.resume=none or another run_dir")
    return None


def damage(ckpt: CheckpointFolder) -> list[str]:
    """Collective: what is wrong with the files of a complete checkpoint, checked against the checksums
    of its marker (each rank reads its share; every rank gets the whole list). Empty: intact."""
    return gather_lists(damage_in_share(ckpt, *world()))


def damage_in_share(ckpt: CheckpointFolder, rank: int = 0, world_size: int = 1) -> list[str]:
    """What is wrong with rank ``rank``'s share of a checkpoint's files (all of them by default)."""
    try:
        files = ckpt.marker().get("files")
        if files is None:
            if rank == 0:
                log.warning("%s records no checksums (saved by an older version): its files are not verified", ckpt.path)
            return []
        return problems_in_share(ckpt.path, files, rank, world_size)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return [f"{ckpt.complete_marker} cannot be read ({type(e).__name__}: {e})"] if rank == 0 else []


def _decided_by_rank0(decide, rank: int):
    """Collective: ``decide()`` on rank 0, its result (JSON) on every rank; a problem it raised is
    raised on every rank, so that no rank waits for one that stopped."""

    outcome: list[Any] = []
    if rank == 0:
        try:
            outcome = [{"value": decide()}]
        except (CheckpointError, ConfigError) as e:
            outcome = [{"error": str(e), "kind": type(e).__name__}]
    shared = gather_lists(outcome)[0]
    if "error" in shared:
        kind = ConfigError if shared["kind"] == "ConfigError" else CheckpointError
        raise kind(shared["error"])
    return shared["value"]


def _choose(root: Path, resume: str) -> list[str]:
    """The checkpoints to try, newest first (``resume=auto``: every complete one; a named one alone)."""
    if resume == "none":
        return []
    recover_interrupted_saves(root)
    if resume == "auto":
        return [str(p) for _, p in reversed(step_dirs(root)) if CheckpointFolder(p).is_complete()]
    path = Path(resume) if Path(resume).is_absolute() or Path(resume).exists() else root / resume
    if not CheckpointFolder(path).is_complete():
        raise CheckpointError(f"checkpoint.resume={resume!r}: {path} is not a complete checkpoint (no {COMPLETE} marker)")
    return [str(path)]


def _streams_of(ckpt: CheckpointFolder) -> int:
    return int(ckpt.read_trainer_state(0).get("num_streams", 1))


_RUN_ADJUSTABLE = {"kernels"}
"""Model config fields a run may change on resume besides those the run config sets (``build.MODEL_KEYS``)."""


_FIELDS_ADDED_SINCE = {"alignment_head": "cls"}
"""Model config fields a checkpoint written before them lacks, with the value that model had."""


def _check_fits(ckpt: CheckpointFolder, model_config: dict[str, Any], codebook, plan: ResumePlan) -> None:
    """A checkpoint of another model shape or another codebook, or one missing an old rank's optimizer
    file that a resume at another number of ranks reads, is refused before anything is loaded."""

    saved = json.loads(ckpt.model_config.read_text(encoding="utf-8"))
    saved = {**_FIELDS_ADDED_SINCE, **saved}
    adjustable = (set(MODEL_KEYS) - ARCHITECTURE_KEYS) | _RUN_ADJUSTABLE
    differ = sorted(k for k in set(saved) | set(model_config) if k not in adjustable and saved.get(k) != model_config.get(k))
    if differ:
        pairs = "; ".join(f"{k}: {saved.get(k)!r} there, {model_config.get(k)!r} here" for k in differ)
        raise CheckpointError(
            f"{ckpt.path} holds another model ({pairs}): resume with the model.init / model.preset it was trained "
            "with, or start a new run_dir (or checkpoint.resume=none)"
        )
    try:
        codebook.check_hash(ckpt.read_trainer_state(0)["codebook_hash"], f"the checkpoint {ckpt.path}")
    except CodebookError as e:
        raise ConfigError(f"{e} (data.codebook)") from None
    if plan.other_world_size:
        try:
            optimizer_files(ckpt.path, plan.world_size)
        except ReshardError as e:
            raise CheckpointError(str(e)) from None


# ---------------------------------------------------------------------------------------------
# loading


def load_checkpoint(engine, plan: ResumePlan, rank: int, num_streams: int, seed: int) -> TrainerState:
    """Collective: load the engine state (re-partitioned at another number of ranks) and this rank's
    trainer state and RNG."""

    ckpt = CheckpointFolder(plan.folder)
    loaded = True
    try:
        if plan.other_world_size:
            load_resharded(engine, ckpt.path, plan.world_size, rank, plan.ranks)
        else:
            loaded = engine.load_checkpoint(str(ckpt.path.parent), tag=ckpt.path.name, load_optimizer_states=True,
                                            load_lr_scheduler_states=True)[0] is not None
    except (OSError, RuntimeError, ValueError, KeyError, AssertionError) as e:
        raise CheckpointError(f"DeepSpeed could not load the engine state from {ckpt.path}: {e}") from e
    if not loaded:
        raise CheckpointError(f"DeepSpeed could not load the engine state from {ckpt.path}")
    same_layout = not plan.other_world_size and plan.num_streams == num_streams
    if same_layout:
        state = TrainerState.from_json(ckpt.trainer_state(rank).read_text(encoding="utf-8"))
    else:
        state = merged_state(ckpt, plan, rank, num_streams)
    if rank < plan.world_size:
        _set_rng_state(torch.load(ckpt.rng_state(rank), weights_only=True))
    else:
        seed_new_rank(seed, rank, state.step)
    return state


def merged_state(ckpt: CheckpointFolder, plan: ResumePlan, rank: int, num_streams: int) -> TrainerState:
    """This rank's trainer state in a new layout (``plan.ranks`` x ``num_streams``), built from every old
    rank's: the step and codebook as saved, the data position re-partitioned exactly once, the
    counters' totals on rank 0."""
    old = [TrainerState.from_json(ckpt.trainer_state(r).read_text(encoding="utf-8")) for r in range(plan.world_size)]
    if len({s.step for s in old}) != 1:
        raise CheckpointError(f"{ckpt.path}: the ranks' trainer states disagree on the step ({[s.step for s in old]})")
    streams = plan.num_streams
    positions = {r * streams + s: st.positions.get(s, StreamPosition()) for r, st in enumerate(old) for s in range(streams)}
    history = dict(old[0].history)
    for st in old[1:]:
        history.update(dict(st.history))
    first, history = repartition(positions, plan.world_size, streams, tuple(sorted(history.items())))
    state = TrainerState(step=old[0].step, codebook_hash=old[0].codebook_hash, world_size=plan.ranks,
                         num_streams=num_streams, history=history,
                         positions={s: StreamPosition(first, 0) for s in range(num_streams)})
    if any(s.mix for s in old):
        state.mix = merged_mix([s.mix for s in old], plan.world_size, streams, num_streams)
    if rank == 0:
        for name in COUNTERS:
            setattr(state, name, sum(getattr(s, name) for s in old))
    return state


def seed_new_rank(seed: int, rank: int, step: int) -> None:
    """The RNG of a rank that the checkpoint did not have: seeded from (seed, rank, step)."""
    torch.manual_seed(int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1))


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

    ckpt = CheckpointFolder(Path(folder))
    if not ckpt.is_complete():
        raise CheckpointError(f"{ckpt.path} is not a complete checkpoint (no {COMPLETE} marker)")
    problems = damage_in_share(ckpt)  # one process reads it all: no collective here
    if problems:
        raise CheckpointError(f"{ckpt.path} is damaged and refused: {'; '.join(problems)}")
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
