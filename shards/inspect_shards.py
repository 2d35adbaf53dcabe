"""``videobert shards inspect PATH``: what shards hold, for a person to check by eye.

    videobert shards inspect SHARDS/ [--sample N | --key KEY] [--frames OUT.png]

PATH is any shard spec ``shards.reader`` accepts (a folder, a tar, a glob, a brace pattern). Prints:

* the schema: kind (clip or token shards), format version, and each field of a sample with its dtype
  and shape;
* counts: shards, samples, clips (from the stats files when every shard has one, else by reading);
* one sample (the first, ``--sample N`` or ``--key KEY``): metadata, text, array shapes, and for token
  shards the token ids.

``--frames OUT.png`` saves the sample's frames as a grid: one row per clip (up to ``--max-rows``), up
to 8 frames per row spread evenly over the clip, the caption drawn as the title. Token shards hold no
frames; the command says so instead of writing a picture.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from videobert.models.errors import printable
from videobert.shards import reader, schema

FRAMES_PER_ROW = 8
THUMB_HEIGHT = 128
_MARGIN = 8
_LABEL_WIDTH = 84
_LINE_HEIGHT = 18


@dataclass(frozen=True)
class Counts:
    shards: int
    samples: int
    clips: int
    from_stats: bool
    """True when the counts come from the stats files rather than from reading the shards."""


def count(urls: Sequence[str]) -> Counts:
    """Samples and clips of the given shards: from their stats files when all have one, else by reading."""
    stats = [reader.read_stats(u) for u in urls]
    if urls and all(s is not None for s in stats):
        return Counts(len(urls), sum(s["samples"] for s in stats), sum(s["clips"] for s in stats), True)
    samples = clips = 0
    for sample in reader.iter_samples(urls, decode_arrays=False, on_error=_warn):
        samples += 1
        clips += sample.meta.n_clips
    return Counts(len(urls), samples, clips, False)


def find_sample(urls: Sequence[str], *, index: int = 0, key: str | None = None) -> schema.Sample | None:
    """The ``index``-th sample (or the one with ``key``), decoded; None when there is no such sample."""
    position = 0
    for raw in reader.iter_raw_samples(urls, on_error=_warn):
        if (key is not None and raw.get("__key__") == key) or (key is None and position == index):
            return schema.decode_sample(raw)
        position += 1
    return None


def describe_schema(sample: schema.Sample) -> list[str]:
    """Lines naming the kind, format version and fields (dtype, shape) of shards like ``sample``'s."""
    meta = sample.meta
    lines = [f"kind {meta.kind}, format version {meta.format_version}", "fields:"]
    for name, array in ((schema.FRAMES, sample.frames), (schema.TOKENS, sample.tokens), (schema.FEATURES, sample.features)):
        if array is None:
            continue
        if name == schema.FRAMES and sample.frame_codec != schema.RAW_CODEC:
            lines.append(f"  <key>.{schema.FRAME_IMAGES} + {schema.FRAME_IMAGE_BYTES}: frames as {sample.frame_codec} "
                         f"images, read as {array.dtype} {_shape_names(name, meta)}")
        else:
            lines.append(f"  <key>.{name:<13} {array.dtype} {_shape_names(name, meta)}")
    lines.append(f"  <key>.{schema.TEXT:<13} UTF-8 caption text")
    lines.append(f"  <key>.{schema.META:<13} metadata (JSON): {', '.join(_meta_fields())}")
    return lines


def _shape_names(name: str, meta: schema.SampleMeta) -> str:
    if name == schema.FRAMES:
        return f"(n_clips, clip_len={meta.clip_len}, height={meta.frame_size[0]}, width={meta.frame_size[1]}, 3) RGB"
    if name == schema.TOKENS:
        return "(n_clips,) visual-token ids"
    return "(n_clips, feature_dim)"


def _meta_fields() -> list[str]:
    return list(schema.SampleMeta.__dataclass_fields__)


def describe_sample(sample: schema.Sample) -> list[str]:
    """Lines showing one sample: key, text, metadata, array shapes, token ids."""
    lines = [f"sample {sample.key}:", f"  text: {sample.text}", "  metadata:"]
    lines += ["    " + line for line in json.dumps(json.loads(sample.meta.to_json()), indent=2).splitlines()]
    for name, array in ((schema.FRAMES, sample.frames), (schema.TOKENS, sample.tokens), (schema.FEATURES, sample.features)):
        if array is not None:
            stored = f" (stored as {sample.frame_codec} images)" if name == schema.FRAMES and sample.frame_codec != schema.RAW_CODEC else ""
            lines.append(f"  {name}: {array.dtype} {tuple(array.shape)}{stored}")
    if sample.tokens is not None:
        lines.append(f"  token ids: {np.array2string(sample.tokens, threshold=64, max_line_width=100)}")
    return lines


def frame_grid(sample: schema.Sample, *, max_rows: int = 16) -> Image.Image:
    """A picture of a clip sample: one row per clip, up to 8 frames each, the caption as the title."""
    if sample.frames is None:
        raise ValueError(f"{sample.key} is a {sample.meta.kind} sample: it has no frames to draw")
    clips = sample.frames[:max_rows]
    picks = np.unique(np.linspace(0, clips.shape[1] - 1, min(FRAMES_PER_ROW, clips.shape[1])).round().astype(int))
    height, width = sample.meta.frame_size
    thumb = (max(1, round(width * THUMB_HEIGHT / height)), THUMB_HEIGHT)
    grid_width = _LABEL_WIDTH + len(picks) * (thumb[0] + _MARGIN) + _MARGIN
    title = _title_lines(sample, grid_width, len(clips))
    top = _MARGIN + _LINE_HEIGHT * len(title) + _MARGIN
    image = Image.new("RGB", (grid_width, top + len(clips) * (thumb[1] + _MARGIN)), "white")
    draw = ImageDraw.Draw(image)
    font = _font()
    for i, line in enumerate(title):
        draw.text((_MARGIN, _MARGIN + _LINE_HEIGHT * i), line, fill="black", font=font)
    for row, clip in enumerate(clips):
        y = top + row * (thumb[1] + _MARGIN)
        start = (sample.meta.first_frame + row * sample.meta.clip_len) / sample.meta.fps
        draw.text((_MARGIN, y + 4), f"clip {row}\n{start:.2f} s", fill="black", font=font)
        for column, frame_index in enumerate(picks):
            x = _LABEL_WIDTH + column * (thumb[0] + _MARGIN)
            image.paste(Image.fromarray(clip[frame_index]).resize(thumb, Image.Resampling.BILINEAR), (x, y))
    return image


def _title_lines(sample: schema.Sample, width: int, rows: int) -> list[str]:
    meta = sample.meta
    header = (
        f"{meta.video_id} segment {meta.segment_index}: {meta.start:.2f}-{meta.end:.2f} s, {meta.n_clips} clips "
        f"of {meta.clip_len} frames at {meta.fps:g} fps" + (f" (first {rows} shown)" if rows < meta.n_clips else "")
    )
    chars = max(20, (width - 2 * _MARGIN) // 8)
    return textwrap.wrap(f'"{sample.text}"', chars) + textwrap.wrap(header, chars)


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        return ImageFont.load_default()


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _warn(url: str, error: Exception) -> None:
    print(printable(f"warning: {url}: {error}"), file=sys.stderr)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="shard folder, tar file, glob or brace pattern")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--sample", type=int, default=0, metavar="N", help="show the N-th sample (default: the first)")
    which.add_argument("--key", help="show the sample with this key")
    parser.add_argument("--frames", type=Path, metavar="OUT.png", help="save the sample's frames as a PNG grid")
    parser.add_argument("--max-rows", type=int, default=16, help="clips drawn at most (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    urls = reader.resolve_shards(args.path)
    sample = find_sample(urls, index=args.sample, key=args.key)
    if sample is None:
        wanted = f"key {args.key!r}" if args.key is not None else f"sample {args.sample}"
        print(printable(f"videobert shards inspect: error: no {wanted} in {args.path}"), file=sys.stderr)
        return 1
    counts = count(urls)
    source = "stats files" if counts.from_stats else "reading the shards"
    print("\n".join(describe_schema(sample)))
    print(f"counts ({source}): {_plural(counts.shards, 'shard')}, {_plural(counts.samples, 'sample')}, "
          f"{_plural(counts.clips, 'clip')}")
    print(printable("\n".join(describe_sample(sample))))  # its key and text are the shard's
    if args.frames is not None:
        if sample.frames is None:
            print(f"{sample.meta.kind} shards hold no frames (visual-token ids only); no picture written")
        else:
            frame_grid(sample, max_rows=args.max_rows).save(args.frames)
            print(f"frames saved to {args.frames}")
    return 0
