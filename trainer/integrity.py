"""A checkpoint's integrity: the checksum of every file, recorded in its completion marker and
verified before anything of it loads; and a save that failed, named for what it is.

The marker (``COMPLETE``) lists each file of the folder under its path relative to the folder, with
its size and SHA-256 (``sha256sum`` checks the same digests by hand). The ranks share the work: when
saving, each rank hashes the files it wrote (right after writing them, so mostly from the page
cache); when resuming, rank ``r`` of ``n`` verifies every ``n``-th file the marker lists (one extra
read of the folder, split over the ranks; the load that follows then reads from the page cache).

A checkpoint whose marker predates checksums is loaded as before, with a warning.
"""

from __future__ import annotations

import errno
import hashlib
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

from videobert.trainer.run_folder import COMPLETE, CheckpointFolder, files_under

CHUNK = 8 << 20
NO_SPACE_BELOW = 64 << 20
"""A write that fails with less than this free on its device is reported as the device being full
(torch's writer loses the OS error: ``basic_ios::clear: iostream error``)."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def written_by(folder: Path, rank: int) -> list[Path]:
    """The files of a checkpoint folder that rank ``rank`` wrote: its ZeRO files and trainer state;
    rank 0 also every file of no rank (the config, DeepSpeed's shared files). Each rank hashes its
    own: on shared storage a rank lists its own files for sure, another node's perhaps not yet."""
    own = re.compile(rf"(^|_)zero_pp_rank_{rank}_mp_rank_\d+_")
    ranked = re.compile(r"(^|_)zero_pp_rank_\d+_mp_rank_\d+_")
    ckpt = CheckpointFolder(folder)
    mine = {ckpt.trainer_state(rank), ckpt.rng_state(rank)}
    found = []
    for path in files_under(folder):
        if path in mine or own.search(path.name):
            found.append(path)
        elif rank == 0 and not ranked.search(path.name) and path.parent != ckpt.trainer_state(0).parent \
                and path.name != COMPLETE:
            found.append(path)
    return found


def checksums(folder: Path, files: Iterable[Path]) -> list[list[Any]]:
    """[relative path, size, sha256] of each file (hashed on threads: hashlib releases the GIL)."""
    files = list(files)
    with ThreadPoolExecutor(max_workers=4) as pool:
        digests = list(pool.map(sha256_of, files))
    return [[p.relative_to(folder).as_posix(), p.stat().st_size, d] for p, d in zip(files, digests)]


def recorded(entries: Iterable[list[Any]]) -> dict[str, dict[str, Any]]:
    """The marker's ``files`` record from every rank's ``checksums``."""
    return {name: {"bytes": size, "sha256": digest} for name, size, digest in sorted(entries)}


def problems_in_share(folder: Path, files: dict[str, dict[str, Any]], rank: int, world_size: int) -> list[str]:
    """What is wrong with rank ``rank``'s share of the files the marker lists (empty: intact)."""
    names = sorted(files)[rank::world_size]
    with ThreadPoolExecutor(max_workers=4) as pool:
        found = pool.map(lambda name: _problem(folder / name, files[name]), names)
        return [problem for problem in found if problem]


def _problem(path: Path, expected: dict[str, Any]) -> str:
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    if size != expected["bytes"]:
        return f"{path} has {size} bytes, its checkpoint's {COMPLETE} marker says {expected['bytes']}"
    if sha256_of(path) != expected["sha256"]:
        return f"{path} is damaged: its SHA-256 differs from the one in its checkpoint's {COMPLETE} marker"
    return ""


def describe_write_failure(folder: Path, error: BaseException) -> str:
    """What a failed checkpoint write was: the device full (and the file being written), or the error."""
    written = newest_file(folder)
    where = f"{written}" if written else f"{folder}"
    try:
        free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
    except OSError:
        free = None
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < NO_SPACE_BELOW):
        left = f"{free} bytes left" if free is not None else "no space left"
        return (f"no space left on the device while writing {where} ({left}): free some space, lower "
                "checkpoint.keep_last or move run_dir, then run the same command again; it resumes from the "
                "newest complete checkpoint (this save was not completed and is deleted when the run starts)")
    return f"could not write the checkpoint file {where}: {error}"


def newest_file(folder: Path) -> Path | None:
    """The file of ``folder`` written last (the one a failed write was writing)."""
    try:
        files = files_under(folder)
        return max(files, key=lambda p: p.stat().st_mtime_ns) if files else None
    except OSError:
        return None
