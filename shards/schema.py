"""The shard schema: the one definition of what a clip shard or a token shard holds.

Every stage that writes or reads shards imports the names below; no other module spells a field
name, a dtype or a file name of the shard layout.

A shard is a WebDataset tar. One sample is one caption segment of one video, stored as tar members
that share a key (the key never contains a dot, so WebDataset splits key and field unambiguously):

    <key>.frames.npy    clip shards: uint8 (n_clips, clip_len, H, W, 3), RGB, pre-decoded
    <key>.tokens.npy    token shards: int32 (n_clips,), visual-token ids in [0, codebook size)
    <key>.features.npy  token shards, optional: float16 (n_clips, D), the clip encoder's features
    <key>.txt           the segment's caption, UTF-8
    <key>.json          metadata (see ``SampleMeta``), UTF-8 JSON

Arrays are stored in NumPy's .npy format and always read with ``allow_pickle=False``.

A shard folder holds ``shard-000000.tar`` ... and, for each finished tar, a stats file
``shard-000000.stats.json`` written after the tar is closed: a tar without its stats file is not
complete and readers skip it. The folder also holds the stage's ``summary.json``,
``errors.jsonl`` (one line per input that could not be used, with the reason) and ``run.json``
(the arguments of the run that wrote it).

A stage split into parts (``--part I/N``, see ``shards.parts``) writes its ``run.json`` (the
arguments every part shares, and N) at the top of the folder and each part's files, laid out as
above, into ``part-00000/`` ... ``part-<N-1>/``; ``videobert shards status`` writes the combined
``summary.json`` at the top. Readers take a folder's shards and its parts' shards alike
(``complete_shards``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

FORMAT_VERSION = 1

CLIP_KIND = "clips"
TOKEN_KIND = "tokens"
KINDS = (CLIP_KIND, TOKEN_KIND)

# Field names: the part of a tar member's name after "<key>.".
FRAMES = "frames.npy"
TOKENS = "tokens.npy"
FEATURES = "features.npy"
TEXT = "txt"
META = "json"

FRAMES_DTYPE = np.dtype(np.uint8)
TOKENS_DTYPE = np.dtype(np.int32)
FEATURES_DTYPE = np.dtype(np.float16)

SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".tar"
STATS_SUFFIX = ".stats.json"
PARTIAL_SUFFIX = ".partial"
SHARD_INDEX_DIGITS = 6
SUMMARY_FILE = "summary.json"
ERRORS_FILE = "errors.jsonl"
RUN_FILE = "run.json"
PART_PREFIX = "part-"
PART_INDEX_DIGITS = 5

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class ShardFormatError(ValueError):
    """A shard or a sample does not follow this schema; the message names the shard and key."""


@dataclass(frozen=True, kw_only=True)
class SampleMeta:
    """Metadata of one sample (one caption segment), stored as the sample's ``json`` field."""

    video_id: str
    """The video's id as the transcript names it (may contain any characters)."""
    segment_index: int
    """Position of the segment in the video's time-sorted caption list."""
    start: float
    """Segment start in seconds, as the transcript gives it (or as fixed: moved past an overlap or up to
    0 s; the fix is listed in the stage's errors.jsonl)."""
    end: float
    """Segment end in seconds, as the transcript gives it (or cut at the end of the video, as listed in
    errors.jsonl)."""
    fps: float
    """Frame rate the frames were decoded at."""
    clip_len: int
    """Frames per clip."""
    frame_size: tuple[int, int]
    """(height, width) of each frame."""
    n_clips: int
    """Number of clips (rows of frames / tokens)."""
    first_frame: int
    """Index (at ``fps``) of the first frame of the first clip in the decoded video."""
    source: str
    """The transcript the caption came from (file name and format)."""
    kind: str = CLIP_KIND
    """``clips`` or ``tokens``."""
    format_version: int = FORMAT_VERSION
    codebook_hash: str | None = None
    """Token shards: content hash of the codebook that produced the tokens."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form additions (e.g. labels carried through by a stage)."""

    def to_json(self) -> bytes:
        d = dataclasses.asdict(self)
        d["frame_size"] = list(self.frame_size)
        return json.dumps(d, sort_keys=True, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any], where: str = "") -> "SampleMeta":
        try:
            d = dict(json.loads(data)) if isinstance(data, (bytes, str)) else dict(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ShardFormatError(f"{where}: metadata is not valid JSON ({e})") from None
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in d and _required(f))
        if unknown or missing:
            raise ShardFormatError(f"{where}: metadata fields unknown {unknown}, missing {missing}")
        version = d.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ShardFormatError(
                f"{where}: written with shard format version {version}, this reader reads version "
                f"{FORMAT_VERSION}; re-run the stage that wrote it with this version"
            )
        if d.get("kind", CLIP_KIND) not in KINDS:
            raise ShardFormatError(f"{where}: kind {d.get('kind')!r} is not one of {KINDS}")
        d["frame_size"] = tuple(int(x) for x in d["frame_size"])
        return cls(**d)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


@dataclass(frozen=True)
class Sample:
    """One decoded sample. Exactly one of ``frames`` / ``tokens`` is set, according to ``meta.kind``."""

    key: str
    text: str
    meta: SampleMeta
    frames: np.ndarray | None = None
    tokens: np.ndarray | None = None
    features: np.ndarray | None = None


def make_key(video_id: str, segment_index: int) -> str:
    """A tar key for a segment: safe characters only, unique per (video, segment).

    Unsafe characters (dots included) become ``_``; when that changed the id, a short checksum of
    the original id keeps two ids that differ only in unsafe characters apart.
    """
    safe = _KEY_UNSAFE.sub("_", video_id)
    if safe != video_id:
        safe = f"{safe}_{zlib.crc32(video_id.encode('utf-8')):08x}"
    return f"{safe}-s{segment_index:05d}"


def shard_name(index: int) -> str:
    return f"{SHARD_PREFIX}{index:0{SHARD_INDEX_DIGITS}d}{SHARD_SUFFIX}"


def stats_path(shard: Path) -> Path:
    return shard.with_name(shard.name[: -len(SHARD_SUFFIX)] + STATS_SUFFIX)


def shard_index(shard: str | Path) -> int:
    """The index in a shard's file name (``shard-000012.tar`` -> 12)."""
    return int(Path(shard).name[len(SHARD_PREFIX): -len(SHARD_SUFFIX)])


def part_folder(folder: str | Path, index: int) -> Path:
    """The folder of part ``index`` of a stage split into parts."""
    return Path(folder) / f"{PART_PREFIX}{index:0{PART_INDEX_DIGITS}d}"


def part_folders(folder: str | Path) -> list[tuple[int, Path]]:
    """(index, folder) of the part folders in a folder, in index order."""
    found = Path(folder).glob(f"{PART_PREFIX}{'[0-9]' * PART_INDEX_DIGITS}")
    return sorted((int(p.name[len(PART_PREFIX):]), p) for p in found if p.is_dir())


def complete_shards(folder: str | Path, *, with_parts: bool = True) -> list[Path]:
    """The finished shards (tar and stats file both present) of a folder and of its parts' folders,
    ordered by shard index, then part (a run split by shards, like tokenize's, thus reads in the
    order one run would have written). ``with_parts=False``: the folder's own shards only."""
    folders = [(-1, Path(folder))] + (part_folders(folder) if with_parts else [])
    found = [(shard_index(t), part, t) for part, f in folders for t in _complete_in(f)]
    return [t for _, _, t in sorted(found)]


def _complete_in(folder: Path) -> list[Path]:
    tars = folder.glob(f"{SHARD_PREFIX}{'[0-9]' * SHARD_INDEX_DIGITS}{SHARD_SUFFIX}")
    return [t for t in tars if stats_path(t).is_file()]


def encode_array(array: np.ndarray) -> bytes:
    """The bytes ``np.save(..., allow_pickle=False)`` writes, built with one copy of the data (frames
    are most of what prepare moves; ``np.save`` into a buffer copies them three times)."""
    return b"".join(encode_array_parts(array))


def encode_array_parts(array: np.ndarray) -> tuple[bytes, memoryview]:
    """The ``.npy`` bytes of ``encode_array`` as (header, the array's own data): written one after the
    other they make the same file, without copying the data at all."""
    array = np.ascontiguousarray(array)
    if array.dtype.hasobject:
        raise ValueError("object arrays are not stored (they would need pickle)")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    return header.getvalue(), memoryview(array.reshape(-1).view(np.uint8))


def decode_array(data: bytes, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ShardFormatError(f"{where}: not a valid .npy array ({e})") from None


def encode_sample(sample: Sample, *, arrays_as_parts: bool = False) -> dict[str, Any]:
    """The dict ``webdataset.TarWriter.write`` takes; validates the sample first. ``arrays_as_parts``:
    arrays as ``encode_array_parts`` gives them (for a writer that writes the parts in turn)."""
    _check(sample, where=sample.key)
    encode = encode_array_parts if arrays_as_parts else encode_array
    out: dict[str, Any] = {"__key__": sample.key, TEXT: sample.text.encode("utf-8"), META: sample.meta.to_json()}
    for name, array in ((FRAMES, sample.frames), (TOKENS, sample.tokens), (FEATURES, sample.features)):
        if array is not None:
            out[name] = encode(array)
    return out


def decode_sample(raw: Mapping[str, Any], *, decode_arrays: bool = True) -> Sample:
    """A raw WebDataset sample (field name -> bytes, plus ``__key__``/``__url__``) to a ``Sample``.

    Raises ``ShardFormatError`` naming the shard and key for anything that does not follow the
    schema. ``decode_arrays=False`` skips the arrays (cheap, for counting and fast-forwarding).
    """
    key = str(raw.get("__key__", "?"))
    where = f"{raw.get('__url__', '?')}:{key}"
    if META not in raw or TEXT not in raw:
        raise ShardFormatError(f"{where}: sample lacks its {META!r} or {TEXT!r} field (truncated shard?)")
    meta = SampleMeta.from_json(raw[META], where)
    try:
        text = bytes(raw[TEXT]).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ShardFormatError(f"{where}: text is not valid UTF-8 ({e})") from None
    array_field = FRAMES if meta.kind == CLIP_KIND else TOKENS
    if array_field not in raw:
        raise ShardFormatError(f"{where}: a {meta.kind} sample lacks its {array_field!r} field")
    head = Sample(key=key, text=text, meta=meta)
    return with_arrays(head, raw) if decode_arrays else head


def with_arrays(head: Sample, raw: Mapping[str, Any]) -> Sample:
    """A sample decoded without its arrays (``decode_arrays=False``) completed from its raw fields."""
    where = f"{raw.get('__url__', '?')}:{head.key}"
    arrays = {name: decode_array(raw[name], f"{where}.{name}") for name in (FRAMES, TOKENS, FEATURES) if name in raw}
    sample = dataclasses.replace(
        head, frames=arrays.get(FRAMES), tokens=arrays.get(TOKENS), features=arrays.get(FEATURES)
    )
    _check(sample, where)
    return sample


def _check(sample: Sample, where: str) -> None:
    meta = sample.meta
    problems = []
    if "." in sample.key:
        problems.append(f"key {sample.key!r} contains a dot")
    if meta.n_clips < 1:
        problems.append(f"n_clips is {meta.n_clips}; a sample holds at least one clip")
    if meta.kind == CLIP_KIND:
        problems += _array_problems(
            sample.frames, FRAMES, FRAMES_DTYPE, (meta.n_clips, meta.clip_len, *meta.frame_size, 3)
        )
    else:
        problems += _array_problems(sample.tokens, TOKENS, TOKENS_DTYPE, (meta.n_clips,))
        if not meta.codebook_hash:
            problems.append("token sample without codebook_hash")
    if sample.features is not None:
        problems += _array_problems(sample.features, FEATURES, FEATURES_DTYPE, (meta.n_clips, None))
    if problems:
        raise ShardFormatError(f"{where}: " + "; ".join(problems))


def _array_problems(array, name, dtype, shape) -> list[str]:
    if array is None:
        return [f"{name} is missing"]
    problems = []
    if array.dtype != dtype:
        problems.append(f"{name} has dtype {array.dtype}, expected {dtype}")
    if array.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, array.shape)):
        problems.append(f"{name} has shape {tuple(array.shape)}, expected {tuple(shape)}")
    return problems
