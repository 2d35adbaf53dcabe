"""Reading shards: which tars a spec names, and their samples decoded and validated by the schema.

A shard spec is any of: a folder (its complete shards, see ``schema.complete_shards``), a local
path or glob, a brace pattern (``data/shard-{000000..000099}.tar``), a ``pipe:`` URL (a command
whose stdout is the tar, e.g. ``pipe:aws s3 cp s3://bucket/shard-000001.tar -``), or a list of
these. Local paths are checked when the spec is resolved, so a missing shard is an error at
start-up rather than hours into a run.
"""

from __future__ import annotations

import glob
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import braceexpand
import webdataset as wds

from shards import schema

ErrorCallback = Callable[[str, Exception], None]


class ShardSpecError(ValueError):
    pass


def resolve_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Expand a shard spec into a list of shard URLs; raises ``ShardSpecError`` naming what is missing."""
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    urls: list[str] = []
    missing: list[str] = []
    for item in items:
        for part in braceexpand.braceexpand(str(item)):
            found = _expand_one(part)
            if found:
                urls.extend(found)
            else:
                missing.append(part)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ShardSpecError(f"no shards found at {shown}")
    return urls


def _expand_one(part: str) -> list[str]:
    if part.startswith("pipe:") or "://" in part:
        return [part]
    path = Path(part)
    if path.is_dir():
        return [str(p) for p in schema.complete_shards(path)]
    if any(c in part for c in "*?["):
        return sorted(glob.glob(part))
    return [part] if path.is_file() else []


def is_local(url: str) -> bool:
    return not (url.startswith("pipe:") or "://" in url)


def read_stats(shard: str | Path) -> dict[str, Any] | None:
    """The stats file of a local shard, or None when it has none (unfinished or not local)."""
    if not is_local(str(shard)):
        return None
    path = schema.stats_path(Path(shard))
    return json.loads(path.read_text()) if path.exists() else None


def iter_raw_samples(urls: Iterable[str], on_error: ErrorCallback | None = None) -> Iterator[dict[str, Any]]:
    """Raw samples (field -> bytes, with ``__key__`` and ``__url__``) of the given shards, in order.

    A shard that cannot be opened or is cut short is reported through ``on_error(url, exc)`` and the
    stream goes on with the next shard; without ``on_error`` the exception propagates.
    """

    last: list[tuple[str, str]] = []

    def handler(exn: Exception) -> bool:
        # webdataset reports a broken tar stream at two levels; tell the caller once.
        url = _url_of(exn)
        if (url, type(exn).__name__) not in last[-1:]:
            last.append((url, type(exn).__name__))
            on_error(url, exn)
        return True

    def checked(urls: Iterable[str]) -> Iterator[dict[str, str]]:
        for url in urls:
            problem = truncation(url)
            if problem:
                exc = schema.ShardFormatError(f"{url}: {problem}")
                if on_error is None:
                    raise exc
                on_error(url, exc)
            yield {"url": url}

    samples = wds.tariterators.tarfile_samples(checked(urls), handler=handler if on_error else wds.reraise_exception)
    yield from samples


_TAR_BLOCK = 512


def truncation(url: str) -> str | None:
    """Why a local tar looks cut short, or None. A tar ends with two zero blocks; Python's tarfile
    stops quietly at a partial header, so a shard cut at the wrong byte would otherwise lose its
    tail without a word."""
    if not is_local(url):
        return None
    try:
        size = os.path.getsize(url)
        with open(url, "rb") as f:
            f.seek(max(0, size - 2 * _TAR_BLOCK))
            tail = f.read(2 * _TAR_BLOCK)
    except OSError as e:
        return f"cannot be read ({e})"
    if size % _TAR_BLOCK or size < 2 * _TAR_BLOCK or tail.count(0) != len(tail):
        return f"truncated shard ({size} bytes, no end-of-archive marker): the samples after the cut are lost"
    return None


def iter_samples(
    urls: Iterable[str], *, decode_arrays: bool = True, on_error: ErrorCallback | None = None
) -> Iterator[schema.Sample]:
    """Decoded, schema-checked samples. Bad samples go to ``on_error`` (or raise without it)."""
    for raw in iter_raw_samples(urls, on_error=on_error):
        try:
            yield schema.decode_sample(raw, decode_arrays=decode_arrays)
        except schema.ShardFormatError as e:
            if on_error is None:
                raise
            on_error(str(raw.get("__url__", "?")), e)


def _url_of(exn: Exception) -> str:
    # webdataset appends the url to the exception's args, or the stream's repr to its message.
    args = [a for a in getattr(exn, "args", ()) if isinstance(a, str)]
    for arg in reversed(args):
        if arg.endswith(schema.SHARD_SUFFIX) or arg.startswith("pipe:"):
            return arg
    for arg in args:
        found = _STREAM_NAME.search(arg)
        if found:
            return found.group(1)
    return "?"


_STREAM_NAME = re.compile(r"name='([^']+)'")
