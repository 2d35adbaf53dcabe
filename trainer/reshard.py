"""Load a ZeRO-3 checkpoint written by another number of ranks, each rank reading only its own share.

ZeRO-3 cuts every parameter on its own: with ``N`` ranks, a parameter of ``n`` elements is padded
to ``N * ceil(n / N)`` and rank ``k`` holds elements ``[k * p, (k + 1) * p)``, ``p = ceil(n / N)``. A
rank's optimizer file holds, per sub-group, the concatenation of its pieces of the sub-group's
parameters (fp32 master weights, and each Adam moment in the same layout); the model-states file
names the parameters of each sub-group in that order (``param_shapes``).

A rank of the new job (``M`` ranks) knows its own sub-groups and the pieces it must hold once the
engine is built. For each of its parameters it copies the elements of its new piece from the old
ranks' pieces that cover them, reading the old optimizer files through ``mmap``: only the pages it
touches are read, so every rank reads about ``1 / M`` of the checkpoint and nothing is converted
or written beside it. The state so built is in DeepSpeed's own per-rank format, and DeepSpeed's own
loader takes it (``engine.load_checkpoint`` with the file served from memory): fp32 masters, both
moments, the optimizer step and per-group hyperparameters, the learning-rate schedule, the engine's
counters, loss scaler and buffers all arrive the way a same-size resume brings them.
"""

from __future__ import annotations

import copy
import math
import pickle
import re
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from videobert.models.errors import VideoBertError

MODEL_STATES = "zero_pp_rank_{rank}_mp_rank_00_model_states.pt"
OPTIM_STATES = re.compile(r"^(bf16_)?zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt$")


class ReshardError(VideoBertError, RuntimeError):
    """The checkpoint's files do not describe this model's ZeRO-3 state (says which file and why)."""


def _deepspeed_globals() -> list[type]:
    """The classes DeepSpeed pickles into its checkpoint files beside tensors and plain values: the
    ZeRO stage and the loss scalers. Nothing else is let through ``torch.load``."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    return [ZeroStageEnum, LossScaler, DynamicLossScaler]


def _deepspeed_file(path: Path, mmap: bool) -> dict[str, Any]:
    """One of DeepSpeed's per-rank files, read with ``weights_only=True`` and DeepSpeed's own few
    classes allowed (``_deepspeed_globals``)."""
    try:
        with torch.serialization.safe_globals(_deepspeed_globals()):
            return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f"a {found.group(1)}" if found else "an object torch refuses to load"
        raise ReshardError(f"{path} holds {what}: only tensors, plain values and DeepSpeed's stage and loss scaler "
                           f"are read from a checkpoint") from e
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        if mmap:  # a file torch cannot map (an older serialization) is read whole
            return _deepspeed_file(path, mmap=False)
        raise ReshardError(f"{path} is unreadable: {e}") from e


def optimizer_files(folder: Path, world_size: int) -> list[Path]:
    """The optimizer file of each rank that wrote ``folder``, in rank order; a missing one is an error."""
    found: dict[int, Path] = {}
    for path in folder.iterdir():
        match = OPTIM_STATES.match(path.name)
        if match:
            found[int(match.group(2))] = path
    missing = [k for k in range(world_size) if k not in found]
    if missing or len(found) != world_size:
        raise ReshardError(f"{folder} was written by {world_size} ranks but holds optimizer files for ranks "
                           f"{sorted(found)} (missing: {missing})")
    return [found[k] for k in range(world_size)]


class _OldRank:
    """One old rank's pieces of every parameter: fp32 masters and the per-element optimizer state."""

    def __init__(self, path: Path, shapes: list[OrderedDict], world_size: int) -> None:
        self.path = path
        self.file = _deepspeed_file(path, mmap=True)
        zero = self.file["optimizer_state_dict"]
        self.zero = zero
        flats = zero["fp32_flat_groups"]
        inner = zero["optimizer_state_dict"]
        order = [i for group in inner["param_groups"] for i in group["params"]]
        if len(flats) != len(shapes) or sorted(order) != list(range(len(flats))):
            raise ReshardError(f"{path}: {len(flats)} sub-groups, {len(shapes)} in the model-states file")
        # where each parameter's piece starts in the rank's concatenated sub-groups
        self.where: dict[str, tuple[int, int]] = {}
        for s, names in enumerate(shapes):
            offset = 0
            for name, shape in names.items():
                self.where[name] = (s, offset)
                offset += math.ceil(math.prod(shape) / world_size)
            if offset != flats[s].numel():
                raise ReshardError(f"{path}: sub-group {s} holds {flats[s].numel()} elements, its parameters "
                                   f"{offset} at {world_size} ranks")
        self.flats = flats
        # sub-group s is the optimizer's parameter number s (sub-groups are made group by group)
        self.state = [inner["state"].get(s, {}) for s in range(len(flats))]

    def piece(self, key: str, name: str, start: int, stop: int) -> torch.Tensor:
        s, offset = self.where[name]
        source = self.flats[s] if key == "fp32" else self.state[s][key]
        return source[offset + start: offset + stop]


def _per_element_keys(old: _OldRank) -> list[str]:
    """The optimizer's state tensors laid out like the weights (Adam: both moments), by their shape."""
    keys = set()
    for s, entry in enumerate(old.state):
        keys |= {k for k, v in entry.items() if torch.is_tensor(v) and v.numel() == old.flats[s].numel() > 1}
    return sorted(keys)


def _new_piece(olds: list[_OldRank], key: str, name: str, numel: int, rank: int, ranks: int) -> torch.Tensor:
    """Elements ``[rank * q, (rank + 1) * q)`` of the parameter (``q = ceil(numel / ranks)``), padding 0."""
    q, p = math.ceil(numel / ranks), math.ceil(numel / len(olds))
    out = torch.zeros(q, dtype=olds[0].piece(key, name, 0, 0).dtype)
    lo, hi = rank * q, min((rank + 1) * q, numel)
    for k in range(lo // p, math.ceil(hi / p)) if hi > lo else ():
        a, b = max(lo, k * p), min(hi, (k + 1) * p)
        out[a - lo: b - lo] = olds[k].piece(key, name, a - k * p, b - k * p)
    return out


def build_rank_state(engine, olds: list[_OldRank], rank: int, ranks: int) -> dict[str, Any]:
    """This rank's optimizer file, as DeepSpeed would have written it at ``ranks`` ranks."""
    zero = engine.optimizer
    names = {id(p): n for n, p in engine.module.named_parameters()}
    keys = _per_element_keys(olds[0])
    first = olds[0].zero["optimizer_state_dict"]
    old_group_of = {}
    for g, group in enumerate(first["param_groups"]):
        for s in group["params"]:
            old_group_of[s] = g
    fp32_flats, state = [], {}
    new_order = sorted(range(len(zero.fp16_groups)), key=lambda s: (zero.sub_group_to_group_id[s], s))
    for s in range(len(zero.fp16_groups)):
        params = zero.fp16_groups[s]
        missing = [n for n in (names.get(id(p)) for p in params) if n is None or n not in olds[0].where]
        if missing:
            raise ReshardError(f"{olds[0].path} has no state for {missing[:5]}")
        pieces = {key: [] for key in ("fp32", *keys)}
        for param in params:
            name = names[id(param)]
            for key in pieces:
                pieces[key].append(_new_piece(olds, key, name, param.ds_numel, rank, ranks))
        flat = torch.cat(pieces["fp32"]) if pieces["fp32"] else torch.zeros(0)
        if flat.numel() != zero.fp32_partitioned_groups_flat[s].numel():
            raise ReshardError(f"sub-group {s}: built {flat.numel()} elements, the engine holds "
                               f"{zero.fp32_partitioned_groups_flat[s].numel()}")
        fp32_flats.append(flat)
        group = zero.sub_group_to_group_id[s]
        template = next((olds[0].state[o] for o in range(len(olds[0].state)) if old_group_of.get(o) == group), {})
        entry = {k: (v.clone() if torch.is_tensor(v) else copy.deepcopy(v)) for k, v in template.items() if k not in keys}
        entry.update({key: torch.cat(pieces[key]) for key in keys})
        if entry:  # an optimizer that never stepped has no state
            state[new_order.index(s)] = entry
    param_groups = []
    for g, group in enumerate(first["param_groups"]):
        param_groups.append({**copy.deepcopy({k: v for k, v in group.items() if k != "params"}),
                             "params": [i for i, s in enumerate(new_order) if zero.sub_group_to_group_id[s] == g]})
    if len(param_groups) != len(zero.optimizer.param_groups):
        raise ReshardError(f"{olds[0].path}: {len(param_groups)} optimizer parameter groups, {len(zero.optimizer.param_groups)} built")
    file = {k: v for k, v in olds[0].file.items() if k != "optimizer_state_dict"}
    file["optimizer_state_dict"] = {**{k: v for k, v in olds[0].zero.items() if k not in ("optimizer_state_dict", "fp32_flat_groups")},
                                    "partition_count": ranks, "fp32_flat_groups": fp32_flats,
                                    "optimizer_state_dict": {"state": state, "param_groups": param_groups}}
    return file


class _Served:
    """DeepSpeed's checkpoint engine, with this rank's optimizer file served from memory."""

    def __init__(self, inner, folder: Path, state: dict[str, Any]) -> None:
        self._inner, self._folder, self._state = inner, folder, state

    def load(self, path, map_location=None):
        path = Path(path)
        if path.parent == self._folder and OPTIM_STATES.match(path.name):
            return self._state
        return self._inner.load(str(path), map_location=map_location)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def load_resharded(engine, folder: Path, world_size: int, rank: int, ranks: int) -> None:
    """Collective (as DeepSpeed's load is): load the ZeRO-3 checkpoint ``folder``, written by
    ``world_size`` ranks, into ``engine`` running as rank ``rank`` of ``ranks``."""
    if engine.zero_nvme_offload_optimizer():
        raise ReshardError(f"{folder} was written by {world_size} ranks: with the optimizer offloaded to NVMe, resume "
                           f"on {world_size} ranks (its state is re-partitioned only in memory)")
    first = _deepspeed_file(folder / MODEL_STATES.format(rank=0), mmap=False)
    shapes = first.get("param_shapes")
    if not isinstance(shapes, list) or int(first.get("dp_world_size", -1)) != world_size:
        raise ReshardError(f"{folder / MODEL_STATES.format(rank=0)} does not describe a {world_size}-rank ZeRO-3 state")
    olds = [_OldRank(path, shapes, world_size) for path in optimizer_files(folder, world_size)]
    state = build_rank_state(engine, olds, rank, ranks)
    del olds
    # DeepSpeed finds a rank's model states by listing its folder: this rank's own copy goes into a
    # private folder, the same for every rank but the number of ranks it states.
    with tempfile.TemporaryDirectory(prefix="videobert-resume-") as tmp:
        tag = folder.name
        mine = Path(tmp) / tag
        mine.mkdir()
        torch.save({**first, "dp_world_size": ranks}, mine / MODEL_STATES.format(rank=rank))
        inner = engine.checkpoint_engine
        engine.checkpoint_engine = _Served(inner, mine, state)
        try:
            load_path, _ = engine.load_checkpoint(tmp, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
        finally:
            engine.checkpoint_engine = inner
    if load_path is None:
        raise ReshardError(f"DeepSpeed loaded nothing from {folder}")


