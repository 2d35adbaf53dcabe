"""The shard schema: the one definition of what a clip shard or a token shard holds.

Every stage that writes or reads shards imports the names below; no other module spells a field
name, a dtype or a file name of the shard layout.

A shard is a WebDataset tar. One sample is one caption segment of one video, stored as tar members
that share a key (the key never contains a dot, so WebDataset splits key and field unambiguously):

    <key>.frames.npy    clip shards: uint8 (n_clips, clip_len, H, W, 3), RGB, pre-decoded
    <key>.frames.images.npy       compressed clip shards, instead of frames.npy: uint8 (total,), each
    <key>.frames.image_bytes.npy  frame as an image file (JPEG or PNG) back to back, and int64
                                  (n_clips * clip_len,) the length of each (``FRAME_CODECS``)
    <key>.tokens.npy    token shards: int32 (n_clips,), visual-token ids in [0, codebook size)
    <key>.features.npy  token shards, optional: float16 (n_clips, D), the clip encoder's features
    <key>.txt           the segment's caption, UTF-8
    <key>.json          metadata (see ``SampleMeta``), UTF-8 JSON

Arrays are stored in NumPy's .npy format and always read with ``allow_pickle=False``. Compressed
frames are decoded when the sample is read (``Sample.frames`` is the same array either way); each
image is checked to be an RGB image of the sample's frame size, in the formats a codec writes, before
its pixels are decoded.

Reading is defensive, because a shard may come from anywhere: metadata of the wrong type, a key that
is not a plain name (a ``/`` would carry a path into the member names a stage writes), a member larger
than the schema allows (``MAX_MEMBER_BYTES``), or an array whose .npy header declares another dtype or
shape than the sample's metadata (or more bytes than follow it) are each a ``ShardFormatError``
naming the shard and key, raised before anything is allocated for the array.

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
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from videobert.models.errors import VideoBertError

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

FRAME_IMAGES = "frames.images.npy"
FRAME_IMAGE_BYTES = "frames.image_bytes.npy"

FRAMES_DTYPE = np.dtype(np.uint8)
IMAGE_BYTES_DTYPE = np.dtype(np.int64)
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
MAX_KEY_LENGTH = 240
"""Longest sample key (``make_key`` of a long video id stays well below it)."""

MAX_TEXT_BYTES = 1 << 20
"""Largest caption member (a caption is a sentence or a few; 1 MiB is far beyond any)."""
MAX_META_BYTES = 1 << 20
"""Largest metadata member."""
MAX_ARRAY_BYTES = 4 << 30
"""Largest array member (4 GiB). Prepare's segment bound keeps frames far below it (300 s at 20 fps
of 224 x 224 frames is 0.9 GB); a member above it is refused before it is read."""
MAX_MEMBER_BYTES = {TEXT: MAX_TEXT_BYTES, META: MAX_META_BYTES, FRAMES: MAX_ARRAY_BYTES, TOKENS: MAX_ARRAY_BYTES,
                    FEATURES: MAX_ARRAY_BYTES, FRAME_IMAGES: MAX_ARRAY_BYTES, FRAME_IMAGE_BYTES: MAX_ARRAY_BYTES}
"""Field -> the largest member of that field a reader accepts."""

RAW_CODEC = "raw"
FRAME_CODECS: dict[str, tuple[str, dict[str, Any]] | None] = {
    RAW_CODEC: None,
    "jpeg": ("JPEG", {"quality": 90}),
    "png": ("PNG", {"compress_level": 1}),
}
"""How clip shards store frames: ``raw`` (frames.npy, the default: no decode cost), ``jpeg`` (each frame
a JPEG at quality 90: lossy, about a tenth of the bytes of natural video) or ``png`` (lossless; fast
compression level). Codec -> (Pillow format, save options), None for raw."""
IMAGE_FORMATS = tuple(spec[0] for spec in FRAME_CODECS.values() if spec)


class ShardFormatError(VideoBertError, ValueError):
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
        """Parse and check metadata; anything that does not follow the schema is a ``ShardFormatError``."""
        d = _parse_meta(data, where)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in d and _required(f))
        if unknown or missing:
            raise ShardFormatError(f"{where}: metadata fields unknown {unknown}, missing {missing}")
        version = d.get("format_version", FORMAT_VERSION)
        if not _is_int(version) or version != FORMAT_VERSION:
            raise ShardFormatError(
                f"{where}: written with shard format version {version!r}, this reader reads version "
                f"{FORMAT_VERSION}; re-run the stage that wrote it with this version"
            )
        wrong = [f"{name} is {_shown(d[name])}, expected {expected}"
                 for name, (expected, valid) in _META_RULES.items() if name in d and not valid(d[name])]
        if wrong:
            raise ShardFormatError(f"{where}: metadata " + "; ".join(wrong))
        d["frame_size"] = tuple(d["frame_size"])
        for name in ("start", "end", "fps"):
            d[name] = float(d[name])
        return cls(**d)


def _parse_meta(data: bytes | str | Mapping[str, Any], where: str) -> dict[str, Any]:
    if isinstance(data, Mapping):
        return dict(data)
    if len(data) > MAX_META_BYTES:
        raise ShardFormatError(f"{where}: metadata of {len(data)} bytes, more than the {MAX_META_BYTES} allowed")
    try:
        parsed = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: JSONDecodeError, huge integers
        raise ShardFormatError(f"{where}: metadata is not valid JSON ({_first_line(e)})") from None
    if not isinstance(parsed, dict):
        raise ShardFormatError(f"{where}: metadata is a JSON {type(parsed).__name__}, expected an object")
    return parsed


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer beyond any float
        return False


def _at_least(low: int) -> Any:
    return lambda v: _is_int(v) and v >= low


_META_RULES: dict[str, tuple[str, Any]] = {
    "video_id": ("a string", lambda v: isinstance(v, str)),
    "segment_index": ("an integer >= 0", _at_least(0)),
    "start": ("a finite number", _is_number),
    "end": ("a finite number", _is_number),
    "fps": ("a positive number", lambda v: _is_number(v) and v > 0),
    "clip_len": ("an integer >= 1", _at_least(1)),
    "frame_size": ("[height, width] in pixels (integers >= 1)",
                   lambda v: isinstance(v, list) and len(v) == 2 and all(_at_least(1)(x) for x in v)),
    "n_clips": ("an integer >= 1", _at_least(1)),
    "first_frame": ("an integer >= 0", _at_least(0)),
    "source": ("a string", lambda v: isinstance(v, str)),
    "kind": (f"one of {list(KINDS)}", lambda v: isinstance(v, str) and v in KINDS),
    "codebook_hash": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "extra": ("an object", lambda v: isinstance(v, dict)),
}
"""Metadata field -> (what it must be, in words; the test)."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


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
    frame_codec: str = RAW_CODEC
    """How the frames are (to be) stored (``FRAME_CODECS``); a read sample says how they were."""


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


def decode_array(data: bytes, where: str, dtype: np.dtype | None = None,
                 shape: tuple[int | None, ...] | None = None) -> np.ndarray:
    """An .npy member as an array. Its header is checked first, against ``dtype`` and ``shape`` (what
    the sample's metadata says; None in ``shape``: any length) and against the bytes that follow it,
    so a header declaring a huge array costs nothing. Raises ``ShardFormatError``."""
    found_shape, fortran, found_dtype, offset = _npy_header(data, where)
    problems = []
    if found_dtype.hasobject:
        problems.append(f"dtype {found_dtype} holds Python objects (they would need pickle)")
    elif dtype is not None and found_dtype != dtype:
        problems.append(f"dtype {found_dtype}, expected {dtype}")
    if shape is not None and (len(found_shape) != len(shape) or any(s is not None and s != f for s, f in zip(shape, found_shape))):
        problems.append(f"shape {tuple(found_shape)}, expected {_shape_text(shape)}")
    count = math.prod(found_shape)
    if not problems and count * found_dtype.itemsize != len(data) - offset:
        problems.append(f"its header declares {count * found_dtype.itemsize} bytes of data, {len(data) - offset} follow")
    if problems:
        raise ShardFormatError(f"{where}: " + "; ".join(problems))
    array = np.frombuffer(data, dtype=found_dtype, count=count, offset=offset)
    return array.reshape(found_shape, order="F" if fortran else "C").copy(order="K")  # writable, as np.load's


def _npy_header(data: bytes, where: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, Fortran order, dtype, offset of the data) from an .npy header."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, fortran, dtype = read_header(stream)
    # Parsing untrusted bytes: numpy reports a bad header with any of these.
    except (ValueError, TypeError, OSError, EOFError, SyntaxError, RecursionError, MemoryError) as e:
        raise ShardFormatError(f"{where}: not a valid .npy array ({_first_line(e)})") from None
    return tuple(shape), bool(fortran), dtype, stream.tell()


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("any" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def expected_arrays(meta: SampleMeta) -> dict[str, tuple[np.dtype, tuple[int | None, ...]]]:
    """Field -> (dtype, shape) of the arrays a sample with this metadata holds (None: any length)."""
    main = ({FRAMES: (FRAMES_DTYPE, (meta.n_clips, meta.clip_len, *meta.frame_size, 3))} if meta.kind == CLIP_KIND
            else {TOKENS: (TOKENS_DTYPE, (meta.n_clips,))})
    return {**main, FEATURES: (FEATURES_DTYPE, (meta.n_clips, None))}


def key_problem(key: str) -> str | None:
    """Why ``key`` is not a sample key (``make_key``'s characters only, so that no path, dot or
    control character reaches a member name), or None."""
    if not key or len(key) > MAX_KEY_LENGTH or _KEY_UNSAFE.search(key):
        return (f"key {_shown(key)} is not a sample key (1 to {MAX_KEY_LENGTH} letters, digits, '_' or '-'; "
                "no '/', '.' or spaces)")
    return None


def encode_sample(sample: Sample, *, arrays_as_parts: bool = False) -> dict[str, Any]:
    """The dict ``webdataset.TarWriter.write`` takes; validates the sample first. ``arrays_as_parts``:
    arrays as ``encode_array_parts`` gives them (for a writer that writes the parts in turn)."""
    _check(sample, where=sample.key)
    encode = encode_array_parts if arrays_as_parts else encode_array
    out: dict[str, Any] = {"__key__": sample.key, TEXT: sample.text.encode("utf-8"), META: sample.meta.to_json()}
    for name, array in ((FRAMES, sample.frames), (TOKENS, sample.tokens), (FEATURES, sample.features)):
        if array is not None:
            if name == FRAMES and sample.frame_codec != RAW_CODEC:
                images, lengths = encode_frames(array, sample.frame_codec)
                out[FRAME_IMAGES], out[FRAME_IMAGE_BYTES] = encode(images), encode(lengths)
            else:
                out[name] = encode(array)
    return out


def encode_frames(frames: np.ndarray, codec: str) -> tuple[np.ndarray, np.ndarray]:
    """(images back to back as uint8, the length of each) of frames (..., H, W, 3) in ``codec``."""
    from PIL import Image

    spec = FRAME_CODECS.get(codec)
    if spec is None:
        raise ValueError(f"frame codec {codec!r}: use one of {', '.join(c for c in FRAME_CODECS if c != RAW_CODEC)}")
    image_format, options = spec
    chunks = []
    for frame in frames.reshape(-1, *frames.shape[-3:]):
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(frame), "RGB").save(buffer, format=image_format, **options)
        chunks.append(buffer.getvalue())
    lengths = np.array([len(c) for c in chunks], dtype=IMAGE_BYTES_DTYPE)
    return np.frombuffer(b"".join(chunks), dtype=np.uint8), lengths


def decode_frames(images: bytes, lengths: bytes | None, meta: SampleMeta, where: str) -> tuple[np.ndarray, str]:
    """(frames (n_clips, clip_len, H, W, 3), codec) from a compressed sample's two members; anything
    that does not follow the schema (lengths that do not add up, an image of another size, mode or
    format, bytes no decoder reads) is a ``ShardFormatError`` naming the frame."""
    from PIL import Image

    count = meta.n_clips * meta.clip_len
    if lengths is None:
        raise ShardFormatError(f"{where}: compressed frames without their {FRAME_IMAGE_BYTES!r} field")
    sizes = decode_array(lengths, f"{where}.{FRAME_IMAGE_BYTES}", IMAGE_BYTES_DTYPE, (count,))
    data = decode_array(images, f"{where}.{FRAME_IMAGES}", FRAMES_DTYPE, (None,))
    if (sizes < 1).any() or int(sizes.sum()) != len(data):
        raise ShardFormatError(f"{where}: {FRAME_IMAGE_BYTES} lists {count} images of {int(sizes.sum())} bytes in "
                               f"all (each at least 1), {FRAME_IMAGES} holds {len(data)}")
    height, width = meta.frame_size
    if count * height * width * 3 > MAX_ARRAY_BYTES:
        raise ShardFormatError(f"{where}: {count} frames of {height}x{width} would decode to more than the "
                               f"{MAX_ARRAY_BYTES} bytes a reader accepts")
    frames = np.empty((count, height, width, 3), dtype=FRAMES_DTYPE)
    codecs = {spec[0]: codec for codec, spec in FRAME_CODECS.items() if spec}
    found = set()
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for i, (start, size) in enumerate(zip(starts.tolist(), sizes.tolist())):
        try:
            with Image.open(io.BytesIO(data[start : start + size].tobytes()), formats=IMAGE_FORMATS) as image:
                if image.size != (width, height) or image.mode != "RGB":
                    raise ShardFormatError(f"{where}: frame {i} is a {image.size[0]}x{image.size[1]} image in mode "
                                           f"{image.mode}, expected {width}x{height} RGB")
                found.add(image.format)
                frames[i] = np.asarray(image)
        except ShardFormatError:
            raise
        except (OSError, SyntaxError, ValueError, MemoryError, Image.DecompressionBombError) as e:
            raise ShardFormatError(f"{where}: frame {i} is not a readable {'/'.join(IMAGE_FORMATS)} image "
                                   f"({_first_line(e)})") from None
    codec = "+".join(sorted(codecs[f] for f in found)) or RAW_CODEC  # "+": a sample of mixed formats
    return frames.reshape(meta.n_clips, meta.clip_len, height, width, 3), codec


def decode_sample(raw: Mapping[str, Any], *, decode_arrays: bool = True) -> Sample:
    """A raw WebDataset sample (field name -> bytes, plus ``__key__``/``__url__``) to a ``Sample``.

    Raises ``ShardFormatError`` naming the shard and key for anything that does not follow the
    schema. ``decode_arrays=False`` skips the arrays (cheap, for counting and fast-forwarding).
    """
    key = str(raw.get("__key__", "?"))
    where = f"{raw.get('__url__', '?')}:{key}"
    if META not in raw or TEXT not in raw:
        skipped = raw.get("__skipped__")  # the reader's finding: members that were links, not files
        why = f"its member {'; '.join(skipped)}" if skipped else "truncated shard?"
        raise ShardFormatError(f"{where}: sample lacks its {META!r} or {TEXT!r} field ({why})")
    problem = key_problem(key)
    if problem:
        raise ShardFormatError(f"{where}: {problem}")
    oversized = [f"{name} is {len(raw[name])} bytes, more than the {limit} allowed"
                 for name, limit in MAX_MEMBER_BYTES.items() if name in raw and len(raw[name]) > limit]
    if oversized:
        raise ShardFormatError(f"{where}: " + "; ".join(oversized))
    meta = SampleMeta.from_json(raw[META], where)
    try:
        text = bytes(raw[TEXT]).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ShardFormatError(f"{where}: text is not valid UTF-8 ({e})") from None
    array_field = FRAMES if meta.kind == CLIP_KIND else TOKENS
    if array_field not in raw and not (meta.kind == CLIP_KIND and FRAME_IMAGES in raw):
        raise ShardFormatError(f"{where}: a {meta.kind} sample lacks its {array_field!r} field")
    head = Sample(key=key, text=text, meta=meta)
    return with_arrays(head, raw) if decode_arrays else head


def with_arrays(head: Sample, raw: Mapping[str, Any]) -> Sample:
    """A sample decoded without its arrays (``decode_arrays=False``) completed from its raw fields."""
    where = f"{raw.get('__url__', '?')}:{head.key}"
    expected = expected_arrays(head.meta)
    compressed = FRAMES in expected and FRAME_IMAGES in raw
    unexpected = [name for name in (FRAMES, TOKENS, FEATURES) if name in raw and name not in expected]
    unexpected += [name for name in (FRAME_IMAGES, FRAME_IMAGE_BYTES) if name in raw and FRAMES not in expected]
    if compressed and FRAMES in raw:
        unexpected.append(f"both {FRAMES} and {FRAME_IMAGES}")
    if unexpected:
        raise ShardFormatError(f"{where}: a {head.meta.kind} sample holds {', '.join(unexpected)}")
    arrays = {name: decode_array(raw[name], f"{where}.{name}", *expected[name]) for name in expected if name in raw}
    codec = RAW_CODEC
    if compressed:
        arrays[FRAMES], codec = decode_frames(raw[FRAME_IMAGES], raw.get(FRAME_IMAGE_BYTES), head.meta, where)
    sample = dataclasses.replace(
        head, frames=arrays.get(FRAMES), tokens=arrays.get(TOKENS), features=arrays.get(FEATURES), frame_codec=codec
    )
    _check(sample, where)
    return sample


def _check(sample: Sample, where: str) -> None:
    meta = sample.meta
    problems = [problem] if (problem := key_problem(sample.key)) else []
    if meta.n_clips < 1:
        problems.append(f"n_clips is {meta.n_clips}; a sample holds at least one clip")
    for name, (dtype, shape) in expected_arrays(meta).items():
        array = {FRAMES: sample.frames, TOKENS: sample.tokens, FEATURES: sample.features}[name]
        if name != FEATURES or array is not None:
            problems += _array_problems(array, name, dtype, shape)
            if array is not None and array.nbytes > MAX_ARRAY_BYTES:
                problems.append(f"{name} is {array.nbytes} bytes, more than the {MAX_ARRAY_BYTES} a reader accepts")
    if meta.kind == TOKEN_KIND and not meta.codebook_hash:
        problems.append("token sample without codebook_hash")
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
