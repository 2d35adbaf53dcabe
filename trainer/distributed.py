"""The job's processes: the process group, each rank's device, collectives, and DeepSpeed's import.

One way in, whatever started the process: the ``deepspeed`` launcher and ``torchrun`` set ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; ``srun`` sets SLURM's variables, which
``shards.ranks`` (the one place that reads launcher variables) translates; a plain ``python`` or
``videobert`` process gets a one-process group on a free local port. Training and evaluation join the same way; each leaves only
the group it created (the demo evaluates inside the process that trained).

Collectives work on whatever device the backend reduces (NCCL: CUDA tensors, gloo: CPU tensors)
and are no-ops for one process. Lists travel between ranks as JSON, never pickle.

DeepSpeed is imported through ``import_deepspeed`` only: it picks its accelerator when first
imported, so the CPU choice must be made before, and its logger and warnings are set once there.
"""

from __future__ import annotations

import ctypes
import datetime
import functools
import json
import logging
import os
import socket
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from videobert.shards.ranks import torch_variables_from_slurm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    created_group: bool = False
    """Whether ``init_distributed`` created the process group (and ``leave_distributed`` ends it)."""
    set_environment: tuple[str, ...] = ()
    """Variables ``init_distributed`` put in the environment for a one-process group
    (``leave_distributed`` takes them out again, so that the process is a plain one afterwards)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(timeout_s: float | None = None) -> DistInfo:
    """Join the job's process group, or create a one-process group for a plain process.

    A group that already exists (the demo evaluates in the process that trained) is joined as is.
    ``timeout_s``: how long a collective waits for the other ranks (None or 0: torch's default).
    """
    _ranks_from_slurm()
    alone: dict[str, str] = {}
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        # A one-process group on a port of its own: a MASTER_PORT inherited without RANK belongs to
        # some other job, and two plain processes sharing it would collide.
        alone = dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
        os.environ.update(alone)
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not cuda:
        keep_freed_memory()
        # DeepSpeed's CPU accelerator otherwise runs `numactl --hardware` (a fork of this large
        # process) for every gradient bucket to count its "devices", which halves CPU step speed.
        os.environ.setdefault("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", "1"))
    else:
        torch.cuda.set_device(local_rank)
    created = not dist.is_initialized()
    if created:
        timeout = {"timeout": datetime.timedelta(seconds=timeout_s)} if timeout_s else {}
        dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://", **timeout)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device,
                    created_group=created, set_environment=tuple(alone))


def leave_distributed(info: DistInfo | None, together: bool) -> None:
    """End the process group if ``info`` created it, and take out of the environment the variables
    ``init_distributed`` put there for a one-process group. ``together``: wait for every rank first
    (a rank that exits while gloo still serves a peer can abort in teardown); skipped after an error,
    when another rank may never arrive."""
    if info is None:
        return
    if info.created_group and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()
    for name in info.set_environment:
        os.environ.pop(name, None)


def end_within(seconds: float, status: int) -> threading.Timer:
    """After an error: whatever the teardown still waits for (a peer that will never answer, a child
    process, a thread), this process ends ``seconds`` from now with ``status``."""

    def end() -> None:
        sys.stderr.write(f"still not ended {seconds:.0f} s after the error above: exiting with status {status}\n")
        sys.stderr.flush()
        os._exit(status)

    timer = threading.Timer(seconds, end)
    timer.daemon = True
    timer.start()
    return timer


def _ranks_from_slurm() -> None:
    """``srun`` starting one task per GPU sets SLURM's variables, not torch's: translate them (the
    batch script exports MASTER_ADDR and MASTER_PORT). Launchers that set RANK win."""
    os.environ.update(torch_variables_from_slurm(os.environ))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@functools.cache
def import_deepspeed():
    """The ``deepspeed`` module, imported with this process's settings in place.

    DeepSpeed picks its accelerator when first imported: without CUDA, say "CPU" rather than let it
    guess. It reports every engine detail at INFO on every rank (the trainer reports what matters),
    and still calls collectives that torch has renamed, a notice that would repeat every step.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for lock in stale_extension_locks():
        log.warning("%s is %.0f minutes old: a process killed while it built or loaded a C++ extension left "
                    "it, and DeepSpeed waits on it without end; delete it if no build is running", lock,
                    lock_age_s(lock) / 60)
    import deepspeed
    from deepspeed.utils import logger

    logger.setLevel(os.environ.get("VIDEOBERT_DEEPSPEED_LOG_LEVEL", "WARNING").upper())
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    return deepspeed


def build_cpu_communication_op() -> bool:
    """Compile DeepSpeed's CPU communication op now (``launch/install.sh`` does, on machines without
    a GPU). DeepSpeed compiles it, a minute or two on two cores, the first time a process group
    starts on CPU and keeps it in torch's extension cache; built at install time, the first run does
    not wait on it. False when DeepSpeed offers no such op (a CUDA machine)."""
    deepspeed = import_deepspeed()
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return False  # what DeepSpeed checks before it builds the op for a process group
    builder.load(verbose=False)
    return True


STALE_LOCK_S = 600.0
"""Age after which a C++ extension's build lock is reported as left behind."""


def stale_extension_locks(max_age_s: float = STALE_LOCK_S) -> list[Path]:
    """Build locks of torch C++ extensions (``TORCH_EXTENSIONS_DIR``, else ``~/.cache/torch_extensions``)
    older than ``max_age_s``. torch takes the lock while it builds or loads an extension (DeepSpeed's
    CPU communication one on every CPU start) and waits, silently, while another holds it; a process
    killed meanwhile leaves it, and every later start then hangs."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch_extensions"
    try:
        found = [*base.glob("*/lock"), *base.glob("*/*/lock")]
        return sorted(lock for lock in found if lock_age_s(lock) > max_age_s)
    except OSError:  # an unreadable cache is torch's to report
        return []


def lock_age_s(lock: Path) -> float:
    try:
        return datetime.datetime.now().timestamp() - lock.stat().st_mtime
    except OSError:
        return 0.0


# ---------------------------------------------------------------------------------------------
# collectives


def world() -> tuple[int, int]:
    """(rank, world size) of the current process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def share(items: Sequence[Any], rank: int, world_size: int) -> list[int]:
    """Indices of ``items`` that rank ``rank`` of ``world_size`` takes: ``rank, rank + n, ...``."""
    return list(range(rank, len(items), world_size))


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce across the job (a no-op for one process), whatever device ``tensor`` is on."""
    if world()[1] > 1:
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        # NCCL reduces CUDA tensors only; gloo reduces CPU tensors.
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        moved = tensor.to(device)
        dist.all_reduce(moved, op=ops[op])
        tensor.copy_(moved)
    return tensor


def sum_across_ranks(values: np.ndarray) -> np.ndarray:
    """Element-wise sum over all ranks (float64; a copy for one process)."""
    tensor = torch.from_numpy(np.asarray(values, dtype=np.float64).copy())
    return all_reduce_(tensor).numpy()


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is true on at least one rank (collective)."""
    return bool(sum_across_ranks(np.array([float(flag)]))[0] > 0)


def gather_lists(items: list[Any]) -> list[Any]:
    """Every rank's list concatenated in rank order (collective). Items travel as JSON (never pickle)."""
    rank, size = world()
    if size == 1:
        return list(items)
    payload = np.frombuffer(json.dumps(items).encode("utf-8"), dtype=np.uint8)
    lengths = np.zeros(size, dtype=np.float64)
    lengths[rank] = len(payload)
    lengths = sum_across_ranks(lengths).astype(np.int64)
    padded = np.zeros((size, int(lengths.max())), dtype=np.float64)
    padded[rank, : len(payload)] = payload
    # A sum of rows that are zero everywhere but at their own rank is an all-gather.
    rows = sum_across_ranks(padded).astype(np.uint8)
    parts = [json.loads(rows[r, : lengths[r]].tobytes().decode("utf-8")) for r in range(size)]
    return [item for part in parts for item in part]
