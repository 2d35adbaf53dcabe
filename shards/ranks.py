"""Where this process stands in its job, read from the launcher's environment (no torch imported).

The one place that reads launcher variables; the trainer's process group and the shard stages' parts
both take them from here:

    launcher                      sets
    torchrun, deepspeed           RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE
    srun (one task per GPU/CPU)   SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE
    sbatch --array=0-N            SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_MAX,
                                  SLURM_ARRAY_TASK_COUNT (SLURM_ARRAY_TASK_STEP for --array=0-98:2)

``job_place(env)`` combines them into one position among all the job's processes: an array task
that starts several processes (``srun`` tasks, or torchrun's) is ``array index x processes +
process rank`` of ``array count x processes`` (an array that is not one range, as when some tasks
are re-run, is refused: those tasks are given ``--part``). ``torch_variables_from_slurm(env)`` gives the
variables torch's ``env://`` rendezvous reads, for a job that ``srun`` started one task per GPU.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from videobert.models.errors import VideoBertError


class LauncherEnvironmentError(VideoBertError, ValueError):
    """The launcher's variables contradict each other; the message names them."""


@dataclass(frozen=True)
class JobPlace:
    """This process's position among the job's processes."""

    index: int
    count: int
    local_rank: int | None
    """The process's index on its node (its GPU), when the launcher says."""
    source: str
    """The variables it was read from, for messages (``SLURM_ARRAY_TASK_ID/COUNT x RANK/WORLD_SIZE``)."""


def torch_variables_from_slurm(env: Mapping[str, str]) -> dict[str, str]:
    """RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE for a process that ``srun`` started as one of
    several tasks; empty when a torch launcher set RANK already, when there is one task, or when the
    batch script did not export MASTER_ADDR (then there is no rendezvous to join)."""
    if "RANK" in env or _int(env, "SLURM_NTASKS", 1) < 2 or "MASTER_ADDR" not in env:
        return {}
    return {
        "RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_NTASKS"], "LOCAL_RANK": env["SLURM_LOCALID"],
        "LOCAL_WORLD_SIZE": env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0],
    }


def available_cpus() -> int:
    """CPUs this process may run on (a launcher may have bound it to its share of the node's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux (macOS, Windows): all the machine's CPUs
        return os.cpu_count() or 1


def local_rank(env: Mapping[str, str]) -> int | None:
    """The process's index on its node: LOCAL_RANK (torch launchers), else SLURM_LOCALID (srun)."""
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        if name in env:
            return _int(env, name, 0)
    return None


def job_place(env: Mapping[str, str]) -> JobPlace | None:
    """This process's place among all the job's processes, or None when no launcher said anything."""
    process = _process(env)
    array = _array_task(env)
    if process is None and array is None:
        return None
    rank, world, process_source = process or (0, 1, "")
    task, tasks, array_source = array or (0, 1, "")
    source = " x ".join(s for s in (array_source, process_source) if s)
    return JobPlace(index=task * world + rank, count=tasks * world, local_rank=local_rank(env), source=source)


def _process(env: Mapping[str, str]) -> tuple[int, int, str] | None:
    """(rank, world size, source) of the processes started together: torch's launchers, else srun's."""
    for rank_name, world_name in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank_name in env and world_name in env:
            rank, world = _int(env, rank_name, 0), _int(env, world_name, 1)
            _check(rank, world, f"{rank_name}={rank}", f"{world_name}={world}")
            return (rank, world, f"{rank_name}/{world_name}") if world > 1 else None
    return None


def _array_task(env: Mapping[str, str]) -> tuple[int, int, str] | None:
    """(index, count, source) of a SLURM array task; ids count from SLURM_ARRAY_TASK_MIN in steps."""
    if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
        return None
    task_id, count = _int(env, "SLURM_ARRAY_TASK_ID", 0), _int(env, "SLURM_ARRAY_TASK_COUNT", 1)
    first, step = _int(env, "SLURM_ARRAY_TASK_MIN", 0), max(1, _int(env, "SLURM_ARRAY_TASK_STEP", 1))
    index, off_step = divmod(task_id - first, step)
    last = _int(env, "SLURM_ARRAY_TASK_MAX", first + (count - 1) * step)
    if (last - first) // step + 1 != count:
        raise LauncherEnvironmentError(
            f"the array is not one range (SLURM_ARRAY_TASK_COUNT={count} tasks from {first} to {last}, as when "
            "re-running some parts with --array=3,17): give each task its part, --part I/N (launch/shards.sbatch "
            "does, from PARTS)"
        )
    if off_step:
        raise LauncherEnvironmentError(
            f"SLURM_ARRAY_TASK_ID={task_id} is not on the array's steps of {step} from {first}; "
            "submit the array as one range, e.g. --array=0-99"
        )
    _check(index, count, f"SLURM_ARRAY_TASK_ID={task_id} (from SLURM_ARRAY_TASK_MIN={first})",
           f"SLURM_ARRAY_TASK_COUNT={count}")
    return (index, count, "SLURM_ARRAY_TASK_ID/COUNT") if count > 1 else None


def _check(index: int, count: int, index_text: str, count_text: str) -> None:
    if count < 1 or not 0 <= index < count:
        raise LauncherEnvironmentError(
            f"{index_text} is not a position among {count_text}; an array must be one range without gaps "
            "(e.g. --array=0-99, or 0-99%10 to run at most 10 at once)"
        )


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise LauncherEnvironmentError(f"{name}={value!r} is not a whole number") from None
