"""Writing a stage's output folder: shards that rotate by size, their stats files, and resuming.

Shards. ``ShardWriter`` appends samples to ``shard-NNNNNN.tar.partial``; a sample's tar members are
made by ``webdataset.TarWriter`` from ``schema.encode_sample`` (directly, or earlier in a worker
process that spooled them with ``SampleSpool``: then they are copied in without being decoded). A shard
is finished when the next sample would exceed ``max_samples`` or ``max_bytes`` (a single sample larger
than ``max_bytes`` gets a shard of its own) and when the writer is closed: the tar's end-of-archive
blocks are written, the file is fsynced and renamed to ``shard-NNNNNN.tar``, and then its stats file is
written under a temporary name and moved into place. The stats file is the commit point: a tar without
it is incomplete (readers skip it, ``resume_point`` removes it), so a process killed at any moment
leaves nothing a reader would take for a complete shard.

Determinism. Every tar member has mtime 0, uid/gid 0, owner ``videobert`` and mode 0444, so the same
samples give the same bytes, whichever process encoded them.

Positions. Each sample is written with a position: a tuple of ints chosen by the caller that increases
from sample to sample (prepare: (video order, segment index)). Stats files record the first and last
position of their shard, the caller's ``state`` as of the last sample, and any ``extra`` fields;
``resume_point(folder)`` reads them back to say where a previous run stopped.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import webdataset as wds

from videobert.models.errors import VideoBertError
from videobert.shards import schema, storage
from videobert.shards.folders import fsync_folder, write_json_atomic

TAR_MTIME = 0
TAR_OWNER = "videobert"
_END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE  # two zero blocks, then zero padding to a whole record

Position = tuple[int, ...]


class ResumeError(VideoBertError, RuntimeError):
    """An output folder's shards do not form a sequence a run could have written."""


def tar_writer(stream: BinaryIO) -> wds.TarWriter:
    """A ``webdataset.TarWriter`` with the fixed member attributes that make output reproducible.

    The writer's tarfile is reopened in plain write mode over the same (new, append-only) stream:
    webdataset opens a streaming tarfile, which pushes every payload through a 10 KB buffer that copies
    it three times, and frame arrays are most of what prepare writes. Plain mode writes each payload in
    one call (``copybufsize`` above any member size lets the payload pass through uncopied). The bytes
    written are the same.
    """
    writer = wds.TarWriter(stream, encoder=False, mtime=TAR_MTIME, user=TAR_OWNER, group=TAR_OWNER)
    writer.tarstream.fileobj.close()  # the unused streaming buffer (it holds nothing yet)
    writer.tarstream = tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT, copybufsize=_ONE_CALL)
    return writer


_ONE_CALL = 1 << 40


def write_sample_members(writer: wds.TarWriter, sample: schema.Sample) -> None:
    """Append a sample's members exactly as ``writer.write(schema.encode_sample(sample))`` would (the same
    bytes), with each array's data written straight from the array: ``TarWriter`` takes one bytes
    object per member, which costs a copy of every frame."""
    fields = schema.encode_sample(sample, arrays_as_parts=True)
    key = fields.pop("__key__")
    tar = writer.tarstream
    for name in sorted(fields):  # the order TarWriter writes them in
        parts = fields[name] if isinstance(fields[name], tuple) else (fields[name],)
        info = tarfile.TarInfo(f"{key}.{name}")
        info.size, info.mtime, info.mode = sum(len(p) for p in parts), writer.mtime, writer.mode
        info.uname, info.gname = writer.user, writer.group
        header = info.tobuf(tar.format, tar.encoding, tar.errors)
        padding = -info.size % tarfile.BLOCKSIZE
        for chunk in (header, *parts, bytes(padding)):
            _write_all(tar.fileobj, chunk)
        tar.offset += len(header) + info.size + padding


def encode_members(sample: schema.Sample) -> bytes:
    """The tar members (headers and padded data, no end-of-archive) of one sample."""
    buffer = io.BytesIO()
    writer = tar_writer(buffer)
    writer.write(schema.encode_sample(sample))
    size = writer.tarstream.offset
    writer.close()
    return buffer.getvalue()[:size]


def tar_size(member_bytes: int) -> int:
    """Size of a tar holding ``member_bytes`` of members, as ``tarfile`` closes it."""
    total = member_bytes + _END_OF_ARCHIVE
    return total + (-total) % tarfile.RECORDSIZE


@dataclass(frozen=True)
class SpooledSample:
    """Where one sample's tar members are in a spool file."""

    offset: int
    length: int
    clips: int


class SampleSpool:
    """A temporary tar of samples written by one process, copied into shards later by another.

    The file is created with the first sample: a spool that received none leaves nothing behind.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: BinaryIO | None = None
        self._tar: wds.TarWriter | None = None

    def add(self, sample: schema.Sample) -> SpooledSample:
        """Append one sample; where its members landed in the spool."""
        if self._tar is None:
            self._file = open(self.path, "wb", buffering=0)
            self._tar = tar_writer(self._file)
        start = self._tar.tarstream.offset
        write_sample_members(self._tar, sample)
        return SpooledSample(start, self._tar.tarstream.offset - start, sample.meta.n_clips)

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._file.close()


_RESERVED = {"shard", "format_version", "samples", "clips", "bytes", "first_position", "last_position", "state"}


@dataclass(frozen=True, kw_only=True)
class ShardStats:
    """The stats file of one finished shard."""

    shard: str
    samples: int
    clips: int
    bytes: int
    first_position: Position
    last_position: Position
    state: dict[str, Any] | None = None
    """The writer's caller's state as of the shard's last sample (what it needs to resume after it)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Further fields the caller asked for (stored at the top level of the file)."""

    def to_json(self) -> dict[str, Any]:
        """The stats file's content (extras at the top level)."""
        return {
            "shard": self.shard, "format_version": schema.FORMAT_VERSION, "samples": self.samples,
            "clips": self.clips, "bytes": self.bytes, "first_position": list(self.first_position),
            "last_position": list(self.last_position), "state": self.state, **self.extra,
        }

    @classmethod
    def read(cls, path: str | Path) -> "ShardStats":
        """Read a stats file."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(
            shard=data["shard"], samples=int(data["samples"]), clips=int(data["clips"]), bytes=int(data["bytes"]),
            first_position=tuple(data["first_position"]), last_position=tuple(data["last_position"]),
            state=data.get("state"), extra={k: v for k, v in data.items() if k not in _RESERVED},
        )


class ShardWriter:
    """Appends samples to rotating shards of a folder (see the module docstring).

    ``with ShardWriter(folder, max_samples=1000) as w: w.write(sample, (video, segment))``. Leaving the
    ``with`` block normally finishes the open shard; leaving it by an exception leaves it ``.partial``.
    """

    def __init__(
        self, folder: str | Path, *, max_samples: int | None = None, max_bytes: int | None = None,
        start_index: int = 0, extra: Mapping[str, Any] | None = None,
        before_finish: Callable[[], None] | None = None,
    ) -> None:
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples must be at least 1, got {max_samples}")
        if max_bytes is not None and max_bytes < tarfile.RECORDSIZE:
            raise ValueError(f"max_bytes must be at least {tarfile.RECORDSIZE} (one tar record), got {max_bytes}")
        clash = _RESERVED & set(extra or {})
        if clash:
            raise ValueError(f"stats extras may not use the reserved names {sorted(clash)}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.extra = dict(extra or {})
        self.before_finish = before_finish
        self.index = start_index
        self.finished: list[ShardStats] = []
        """Stats of the shards this writer finished, in order."""
        self._file: BinaryIO | None = None
        self._open = _OpenShard()
        self._last_position: Position | None = None

    # -- writing -------------------------------------------------------------------------------------

    def write(self, sample: schema.Sample, position: Sequence[int], state: Mapping[str, Any] | None = None) -> None:
        """Encode and append one sample."""
        self.write_members(encode_members(sample), position, clips=sample.meta.n_clips, state=state)

    def write_members(
        self, members: bytes, position: Sequence[int], *, clips: int, state: Mapping[str, Any] | None = None
    ) -> None:
        """Append one sample's tar members (from ``encode_members``)."""
        position = self._begin(len(members), position)
        _write_all(self._file, members)
        self._end(len(members), position, clips, state)

    def copy_members(
        self, source: BinaryIO, spooled: SpooledSample, position: Sequence[int],
        state: Mapping[str, Any] | None = None,
    ) -> None:
        """Append one sample's tar members from a spool file (copied by the kernel, not decoded)."""
        position = self._begin(spooled.length, position)
        _copy_range(source, self._file, spooled.offset, spooled.length)
        self._end(spooled.length, position, spooled.clips, state)

    def close(self) -> None:
        """Finish the open shard, if any."""
        if self._file is not None:
            self._finish()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._file is not None:
            self._file.close()

    # -- internals -----------------------------------------------------------------------------------

    def _begin(self, length: int, position: Sequence[int]) -> Position:
        """Check the position, finish the open shard when this sample does not fit, open one if none is."""
        position = tuple(int(p) for p in position)
        if self._last_position is not None and position <= self._last_position:
            raise ValueError(f"sample positions must increase: {position} after {self._last_position}")
        if self._file is not None and self._full_with(length):
            self._finish()
        if self._file is None:
            self._file = open(self._partial_path(), "wb", buffering=0)
            self._open = _OpenShard()
        return position

    def _full_with(self, length: int) -> bool:
        if self.max_samples is not None and self._open.samples + 1 > self.max_samples:
            return True
        return self.max_bytes is not None and tar_size(self._open.bytes + length) > self.max_bytes

    def _end(self, length: int, position: Position, clips: int, state: Mapping[str, Any] | None) -> None:
        shard = self._open
        if shard.bytes + length - shard.flushed >= _WRITEBACK_BYTES:
            _start_writeback(self._file, shard.flushed, shard.bytes + length - shard.flushed)
            shard.flushed = shard.bytes + length
        shard.samples += 1
        shard.clips += clips
        shard.bytes += length
        shard.first_position = shard.first_position or position
        shard.last_position = position
        shard.state = dict(state) if state is not None else None
        self._last_position = position

    def _partial_path(self) -> Path:
        return self.folder / (schema.shard_name(self.index) + schema.PARTIAL_SUFFIX)

    def _finish(self) -> None:
        assert self._file is not None
        padding = tar_size(self._open.bytes) - self._open.bytes
        _write_all(self._file, bytes(padding))
        if self.before_finish is not None:
            self.before_finish()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        final = self.folder / schema.shard_name(self.index)
        os.replace(self._partial_path(), final)
        fsync_folder(self.folder)
        stats = self._open.stats(final, self.extra)
        storage.published(final)  # a remote folder: the tar is uploaded whole before its stats file
        write_json_atomic(schema.stats_path(final), stats.to_json())
        self.finished.append(stats)
        self.index += 1


@dataclass
class _OpenShard:
    samples: int = 0
    clips: int = 0
    bytes: int = 0
    """Bytes of members written so far (the tar's size before its end-of-archive)."""
    flushed: int = 0
    """Bytes handed to the disk ahead of the final fsync."""
    first_position: Position | None = None
    last_position: Position | None = None
    state: dict[str, Any] | None = None

    def stats(self, path: Path, extra: dict[str, Any]) -> ShardStats:
        return ShardStats(
            shard=path.name, samples=self.samples, clips=self.clips, bytes=path.stat().st_size,
            first_position=self.first_position or (), last_position=self.last_position or (),
            state=self.state, extra=extra,
        )


# ---------------------------------------------------------------------------------------------------
# Resuming


@dataclass(frozen=True)
class ResumePoint:
    """Where a folder's previous run stopped."""

    next_index: int
    """Index of the next shard to write."""
    last_position: Position | None
    """Position of the last sample of the last complete shard; None when there is none."""
    last_state: dict[str, Any] | None
    """The caller's state stored with that sample."""
    shards: list[ShardStats]
    """Stats of the complete shards, in order."""


def resume_point(folder: str | Path) -> ResumePoint:
    """Read where a folder's previous run stopped, removing its leftovers.

    Leftovers are ``*.partial`` files (unfinished shards, temporary stats, spools) and shard tars without
    a stats file (a run killed between renaming a shard and writing its stats). Raises ``ResumeError``
    when the complete shards do not run 0, 1, ..., n-1.
    """
    folder = Path(folder)
    for leftover in folder.glob(f"*{schema.PARTIAL_SUFFIX}"):
        leftover.unlink()
    complete = schema.complete_shards(folder, with_parts=False)
    for tar in folder.glob(f"{schema.SHARD_PREFIX}*{schema.SHARD_SUFFIX}"):
        if tar not in complete and not schema.stats_path(tar).exists():
            tar.unlink()
    shards = [ShardStats.read(schema.stats_path(t)) for t in complete]
    for expected, stats in enumerate(shards):
        if stats.shard != schema.shard_name(expected):
            raise ResumeError(
                f"{folder}: complete shards must be numbered from 0 without gaps, but "
                f"{schema.shard_name(expected)} is missing before {stats.shard}; remove the folder's shards "
                "or start over"
            )
    last = shards[-1] if shards else None
    return ResumePoint(
        next_index=len(shards), last_position=tuple(last.last_position) if last else None,
        last_state=last.state if last else None, shards=shards,
    )


# ---------------------------------------------------------------------------------------------------
# Bytes


def _write_all(file: BinaryIO, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[file.write(view):]


def _copy_range(source: BinaryIO, target: BinaryIO, offset: int, length: int) -> None:
    """Copy ``length`` bytes at ``offset`` of ``source`` to the current position of ``target``."""
    src, dst = source.fileno(), target.fileno()
    done = 0
    while done < length:
        try:
            n = os.copy_file_range(src, dst, length - done, offset + done)
        except (AttributeError, OSError):
            n = _write_all_count(target, os.pread(src, min(length - done, 1 << 24), offset + done))
        if n == 0:
            raise EOFError(f"{getattr(source, 'name', 'spool')}: ends before byte {offset + length}")
        done += n


def _write_all_count(file: BinaryIO, data: bytes) -> int:
    _write_all(file, data)
    return len(data)


_WRITEBACK_BYTES = 8 << 20


def _start_writeback(file: BinaryIO, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range to disk now, without waiting (Linux: POSIX_FADV_DONTNEED
    starts writeback of dirty pages), so the fsync that finishes the shard has little left to do."""
    try:
        os.posix_fadvise(file.fileno(), offset, length, os.POSIX_FADV_DONTNEED)
    except (AttributeError, OSError):
        pass  # only a speed hint
