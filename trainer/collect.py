"""Evaluation across ranks: which shards each rank reads, and how the ranks' results come together.

Evaluation splits work by whole shards (rank ``r`` of ``n`` takes shards ``r, r + n, ...``) and
builds every batch from one shard only, with random choices seeded by the shard's index. A sample
therefore meets the same neighbours, masks and negatives whatever the number of ranks, and the
totals of a 2-process evaluation equal those of one process.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of the current process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def my_shards(urls: Sequence[str], rank: int, world_size: int) -> list[int]:
    """Indices (into ``urls``) of the shards rank ``rank`` evaluates."""
    return list(range(rank, len(urls), world_size))


def sum_across_ranks(values: np.ndarray) -> np.ndarray:
    """Element-wise sum over all ranks (float64; a copy for one process)."""
    tensor = torch.from_numpy(np.asarray(values, dtype=np.float64).copy())
    if world()[1] > 1:
        # NCCL reduces CUDA tensors only; gloo reduces CPU tensors.
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        moved = tensor.to(device)
        dist.all_reduce(moved)
        tensor = moved.cpu()
    return tensor.numpy()


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is true on at least one rank (collective)."""
    return bool(sum_across_ranks(np.array([float(flag)]))[0] > 0)


def gather_lists(items: list[Any]) -> list[Any]:
    """Every rank's list concatenated in rank order (collective). Items travel as JSON (never pickle)."""
    if world()[1] == 1:
        return list(items)
    payload = np.frombuffer(json.dumps(items).encode("utf-8"), dtype=np.uint8)
    sizes = sum_across_ranks(_one_hot(world(), len(payload))).astype(np.int64)
    padded = np.zeros((world()[1], int(sizes.max())), dtype=np.float64)
    padded[world()[0], : len(payload)] = payload
    # A sum of rows that are zero everywhere but at their own rank is an all-gather.
    rows = sum_across_ranks(padded).astype(np.uint8)
    parts = [json.loads(rows[r, : sizes[r]].tobytes().decode("utf-8")) for r in range(world()[1])]
    return [item for part in parts for item in part]


def _one_hot(rank_world: tuple[int, int], value: int) -> np.ndarray:
    out = np.zeros(rank_world[1], dtype=np.float64)
    out[rank_world[0]] = value
    return out
