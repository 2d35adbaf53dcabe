"""Reading shards: which tars a spec names, and their samples decoded and validated by the schema.

A shard spec is any of: a folder (its complete shards, see ``schema.complete_shards``), a local
path or glob, a brace pattern (``data/shard-{000000..000099}.tar``), an object URL that fsspec
reaches (``s3://bucket/prefix``, ``gs://``, ``az://``, ``file://``: a prefix is read as a folder is,
its parts included; a URL may also name one shard or a glob), a ``pipe:`` URL (a command whose
stdout is the tar), or a list of these. Paths and objects are checked when the spec is resolved, so
a missing shard is an error at start-up rather than hours into a run. Objects are streamed through
``shards.storage`` (ranged reads, retried on transient errors), never downloaded whole first.

Trust. A ``pipe:`` spec is a shell command: fine on the user's command line or recipe, not in a file
that came with a model. A spec read from such a file is resolved with ``from_file=`` and may then
name local shards and object URLs of the schemes in ``storage.TRUSTED_SCHEMES`` only (reading them
runs no command and reaches no host the file chooses; the user's own credentials apply).

Local shards and objects are checked before they are streamed: a tar cut short is reported
(``truncation``), and a file that is not an uncompressed tar is refused unread. While a shard is
streamed, each member's size is read from its header before its data: a member larger than the schema
allows for its field is listed and left unread (the reader passes over it in bounded chunks), so one
member cannot make a reader allocate without bound, and no shard is read twice to find out.
"""

from __future__ import annotations

import concurrent.futures
import functools
import glob
import io
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import braceexpand
import webdataset as wds

from videobert.models.errors import VideoBertError
from videobert.shards import schema, storage

ErrorCallback = Callable[[str, Exception], None]


class ShardSpecError(VideoBertError, ValueError):
    pass


MAX_UNTRUSTED_SHARDS = 100_000
"""Most shards one brace pattern from a file that came with a model may expand to (a pattern such as
``{0..999999999}`` would otherwise keep the reader checking paths for hours)."""


def resolve_shards(spec: str | os.PathLike | Sequence[str | os.PathLike], *, from_file: str | None = None,
                   allow: str = "") -> list[str]:
    """Expand a shard spec into a list of shard URLs; raises ``ShardSpecError`` naming what is missing.

    ``from_file``: the spec was read from this file, one that came with a model or checkpoint rather
    than from the user; then a ``pipe:`` command or a URL in it is refused, the message ending with
    ``allow`` (how the user lets it run).
    """
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    urls: list[str] = []
    missing: list[str] = []
    for item in items:
        if from_file is not None and _brace_count(str(item)) > MAX_UNTRUSTED_SHARDS:
            raise ShardSpecError(f"{from_file} names more than {MAX_UNTRUSTED_SHARDS} shards in {str(item)[:120]!r}"
                                 f"{'; ' + allow if allow else ''}")
        for part in braceexpand.braceexpand(str(item)):
            _check_trusted(part, from_file, allow)
            found = _expand_one(part)
            if found:
                urls.extend(found)
            else:
                missing.append(part)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ShardSpecError(f"no shards found at {shown}")
    return urls


_INNERMOST = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.-?\d+)?$")


def _brace_count(pattern: str) -> int:
    """An upper bound of the names a brace pattern expands to, found without expanding it (braceexpand
    builds each numeric range as a list first): the product of every group's size, innermost first."""
    count = 1
    while (group := _INNERMOST.search(pattern)) is not None:
        numbers = _RANGE.match(group.group(1))
        count *= abs(int(numbers.group(2)) - int(numbers.group(1))) + 1 if numbers else group.group(1).count(",") + 1
        pattern = pattern[: group.start()] + "_" + pattern[group.end():]
    return count


def _check_trusted(part: str, from_file: str | None, allow: str) -> None:
    """Refuse credentials in a URL; from a file that came with a model, anything but local shards and
    object URLs of ``storage.TRUSTED_SCHEMES``."""
    if storage.has_user_part(part):
        raise ShardSpecError(f"the shard URL {storage.shown(part)[:120]!r} carries credentials; give them through the "
                             "environment or a profile (AWS_ACCESS_KEY_ID, ...), never in a config")
    if from_file is None or is_local(part) or (storage.scheme(part) in storage.TRUSTED_SCHEMES and "::" not in part):
        return
    raise ShardSpecError(
        f"{from_file} names the shards {part[:120]!r}, which would run a command or open a URL of another kind; a "
        f"shard spec from a file that came with a model may only name local files and "
        f"{', '.join(s + '://' for s in storage.TRUSTED_SCHEMES)} objects{'; ' + allow if allow else ''}"
    )


def _expand_one(part: str) -> list[str]:
    part = storage.local_path(part)
    if storage.is_remote(part):
        return _expand_remote(part)
    if part.startswith("pipe:") or "://" in part:
        return [part]
    path = Path(part)
    if path.is_dir():
        return [str(p) for p in schema.complete_shards(path)]
    if any(c in part for c in "*?["):
        return sorted(glob.glob(part))
    return [part] if path.is_file() else []


def _expand_remote(url: str) -> list[str]:
    """A remote glob's objects, one object, or a prefix's complete shards (as a folder's)."""
    if any(c in url for c in "*?["):
        return storage.glob(url)
    if url.endswith(schema.SHARD_SUFFIX) and storage.is_file(url):
        return [url]
    return complete_remote_shards(url)


def complete_remote_shards(url: str, *, with_parts: bool = True) -> list[str]:
    """``schema.complete_shards`` of a remote prefix, from one listing: tars whose stats file is there,
    by shard index, then part."""
    listed = storage.list_files(url)
    found = []
    for name in listed:
        folder, _, base = name.rpartition("/")
        stats = f"{name[:-len(schema.SHARD_SUFFIX)]}{schema.STATS_SUFFIX}"
        if not _COMPLETE_NAME.fullmatch(base) or stats not in listed:
            continue
        if folder and not (with_parts and _PART_NAME.fullmatch(folder)):
            continue
        found.append((schema.shard_index(base), int(folder[len(schema.PART_PREFIX):]) if folder else -1, name))
    return [storage.join(url, name) for _, _, name in sorted(found)]


_COMPLETE_NAME = re.compile(
    re.escape(schema.SHARD_PREFIX) + r"\d{%d}" % schema.SHARD_INDEX_DIGITS + re.escape(schema.SHARD_SUFFIX))
_PART_NAME = re.compile(re.escape(schema.PART_PREFIX) + r"\d{%d}" % schema.PART_INDEX_DIGITS)


def is_local(url: str) -> bool:
    return not (url.startswith("pipe:") or "://" in url)


def read_stats(shard: str | Path) -> dict[str, Any] | None:
    """The stats file of a shard, or None when it has none (unfinished, or read through ``pipe:``)."""
    if storage.is_remote(str(shard)):
        stats = f"{str(shard)[:-len(schema.SHARD_SUFFIX)]}{schema.STATS_SUFFIX}"
        try:
            return json.loads(storage.read_bytes(stats))
        except storage.StorageError as e:
            if isinstance(e.__cause__, FileNotFoundError):
                return None
            raise
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
    current = [""]

    def handler(exn: Exception) -> bool:
        if isinstance(exn, storage.StorageError):
            raise exn  # the store, not the shard: stop, naming the object, rather than skip its samples
        # The stream is read one shard at a time: the shard in hand is the one at fault.
        url = current[0] or _url_of(exn)
        problem, once = _tar_problem(exn)
        # webdataset reports a broken tar stream at two levels; tell the caller once.
        if not once or (url, "broken") not in last[-1:]:
            last.append((url, "broken" if once else problem))
            on_error(url, schema.ShardFormatError(f"{url}: {problem}"))
        return True

    def report(url: str, problem: str) -> None:
        exc = schema.ShardFormatError(f"{url}: {problem}")
        if on_error is None:
            raise exc
        on_error(url, exc)

    def checked(urls: Iterable[str]) -> Iterator[dict[str, Any]]:
        for url, opening in _opened_ahead(urls):
            try:
                refused = not_a_tar(url, opening.head() if opening else None)
                if refused:
                    opening.stream.close() if opening else None
                    report(url, refused)
                    continue
                problem = truncation(url, opening.size if opening else None,
                                     opening.tail.result() if opening else None)
                if problem:
                    report(url, problem)
            except BaseException:
                opening.stream.close() if opening else None  # not handed out: closed here
                raise
            current[0] = url  # the stream is read one shard at a time, in this order
            yield {"url": url, "stream": opening.stream} if opening else {"url": url}

    def readable(name: str, size: int) -> bool:
        if not _MEMBER_NAME.match(os.path.basename(name)):
            report(current[0], f"member {name[:120]!r} is not named KEY.FIELD; not read")
            return False
        limit = schema.MAX_MEMBER_BYTES.get(os.path.basename(name).partition(".")[2].lower(), schema.MAX_ARRAY_BYTES)
        if size > limit:
            report(current[0], f"member {name} is {size} bytes, more than the {limit} the schema allows; not read")
            return False
        return True

    on_tar_error = handler if on_error else wds.reraise_exception
    files = _members(_opened(checked(urls), on_tar_error), on_tar_error, readable)
    for raw in wds.tariterators.group_by_keys(files, handler=on_tar_error):
        if schema.META not in raw or schema.TEXT not in raw:  # rare: say which member was skipped, and why
            raw["__skipped__"] = skipped_members(str(raw.get("__url__", "")), str(raw.get("__key__", "")))
        yield raw


def _opened(sources: Iterable[dict[str, Any]], handler: Callable[[Exception], bool]) -> Iterator[dict[str, Any]]:
    """webdataset's ``url_opener`` for local shards and ``pipe:``; a remote shard comes already opened
    through ``shards.storage`` (webdataset's own openers would run a command-line client)."""
    for source in sources:
        if "stream" in source:
            yield source
        else:
            yield from wds.tariterators.url_opener([source], handler=handler)


def _members(sources: Iterable[dict[str, Any]], handler: Callable[[Exception], bool],
             readable: Callable[[str, int], bool]) -> Iterator[dict[str, Any]]:
    """The files of each opened shard in order, as webdataset's ``group_by_keys`` takes them
    (``fname``, ``data``, ``__url__``; an empty dict after each shard). A member is offered to
    ``readable(name, size)`` from its header, before any of its data is read; one it refuses is passed
    over in bounded chunks. An error inside a member goes to ``handler`` and the shard goes on when it
    says so (else the shard ends there); an error that breaks the tar off goes to ``handler`` once
    more and ends the shard (and the stream, when the handler says so)."""
    try:
        for source in sources:
            url, stream = source["url"], source["stream"]
            try:
                tar = tarfile.open(fileobj=stream, mode="r|*")
                for info in tar:
                    try:
                        if not info.isreg() or not info.name or _WEBDATASET_META.match(info.name):
                            continue
                        if readable(info.name, info.size):
                            yield {"fname": info.name, "data": tar.extractfile(info).read(), "__url__": url}
                        tar.members = []  # a stream's headers are not kept
                    except Exception as exn:  # noqa: BLE001 - the handler decides, as webdataset's would
                        exn.args = (f"{exn.args[0] if exn.args else type(exn).__name__} @ {stream}", *exn.args[1:])
                        if not handler(exn):
                            break  # this shard ends here; the next one is read, as webdataset's reader does
            except Exception as exn:  # noqa: BLE001 - the tar breaks off here
                exn.args = (*exn.args, stream, url)
                if not handler(exn):
                    return
            finally:
                if isinstance(stream, io.BufferedReader) and isinstance(stream.raw, storage.RetryingReader):
                    stream.close()  # its read-ahead threads with it
            yield {}
    finally:
        close = getattr(sources, "close", None)
        if close is not None:
            close()  # the shard opened ahead, closed now rather than whenever the generator is collected


_WEBDATASET_META = re.compile(r"__[^/]*__($|/)")
"""Members webdataset keeps for itself (``__key__``-like names), passed over as its reader does."""

_TAR_BLOCK = 512
_MEMBER_NAME = re.compile(r"^[^.]+\.")


@dataclass
class _Opening:
    """An object shard opened ahead: its size, its stream (the first blocks asked for) and its last
    two blocks (asked for too)."""

    size: int
    stream: io.BufferedReader
    tail: concurrent.futures.Future[bytes]

    def head(self) -> bytes:
        return self.stream.peek(_TAR_BLOCK)[:_TAR_BLOCK]  # from the first block: read, not consumed


def _open_object(url: str) -> _Opening:
    size = storage.object_size(url)  # one request, not one per check
    stream = storage.open_stream(url, size)
    tail = stream.raw.ask(max(0, size - 2 * _TAR_BLOCK), size)
    stream.raw.start()
    return _Opening(size, stream, tail)


def _opened_ahead(urls: Iterable[str]) -> Iterator[tuple[str, _Opening | None]]:
    """Each shard with, for an object, its opening (``_open_object``): the next object is opened as
    this one is handed out, so that its requests (all but its size) are answered while this one is
    read, rather than waited for between shards. A local shard or ``pipe:`` is opened by the reader."""
    urls = iter(urls)

    def opened(url: str | None) -> tuple[str, _Opening | BaseException | None] | None:
        if url is None or not storage.is_remote(url):
            return None if url is None else (url, None)
        try:
            return url, _open_object(url)
        except Exception as e:  # noqa: BLE001 - raised when the reader reaches this shard, not before
            return url, e

    following = opened(next(urls, None))
    current = None
    try:
        while following is not None:
            current, following = following, None
            if isinstance(current[1], BaseException):
                raise current[1]
            following = opened(next(urls, None))
            url, opening = current
            current = None  # handed out: the reader closes it
            yield url, opening
    finally:
        for pending in (current, following):
            if pending is not None and isinstance(pending[1], _Opening):
                pending[1].stream.close()


def truncation(url: str, size: int | None = None, tail: bytes | None = None) -> str | None:
    """Why a local tar looks cut short, or None. A tar ends with two zero blocks; Python's tarfile
    stops quietly at a partial header, so a shard cut at the wrong byte would otherwise lose its
    tail without a word. An object's size and last two blocks may be given (read already)."""
    if storage.is_remote(url):
        size = storage.object_size(url) if size is None else size
        tail = storage.read_range(url, max(0, size - 2 * _TAR_BLOCK), size) if tail is None else tail
    elif not is_local(url):
        return None
    else:
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


def not_a_tar(url: str, first: bytes | None = None) -> str | None:
    """Why a local file is not read at all (it is not an uncompressed tar: a compressed stream could
    expand without bound), or None. An object's first block may be given (read already)."""
    if storage.is_remote(url):
        first = storage.read_range(url, 0, _TAR_BLOCK) if first is None else first
    elif not is_local(url):
        return None
    else:
        try:
            with open(url, "rb") as f:
                first = f.read(_TAR_BLOCK)
        except OSError as e:
            return f"cannot be read ({e})"
    if first.count(0) == len(first) or first[257:262] == b"ustar":  # empty archive, or a POSIX/GNU header
        return None
    return "not an uncompressed tar (no tar header in its first block); a shard is a plain tar"


def skipped_members(url: str, key: str) -> list[str]:
    """What the sample ``key`` of a local shard lost to members a reader skips (links, special
    files): "KEY.json is a symbolic link (to ...)". Read from the headers once per shard."""
    try:
        stat = os.stat(url) if is_local(url) else None
    except OSError:
        return []
    found = _non_file_members(url, stat.st_size, stat.st_mtime_ns) if stat else ()
    return [f"{name[:120]!r} is {what}" for name, what in found if _key_of(name) == key]


@functools.lru_cache(maxsize=16)
def _non_file_members(url: str, size: int, mtime_ns: int) -> tuple[tuple[str, str], ...]:
    try:
        with tarfile.open(url, "r:") as tar:  # headers only: tarfile seeks over the data
            return tuple((m.name, _member_kind(m)) for m in tar if not (m.isreg() or m.isdir()))
    except (OSError, tarfile.TarError):
        return ()


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link (to {member.linkname[:120]!r}), not a file"
    if member.islnk():
        return f"a hard link (to {member.linkname[:120]!r}), not a file"
    return "not a file (a device or a pipe)"


def _key_of(name: str) -> str:
    # WebDataset's own split of a member name into the sample key and the field.
    match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", name)
    return match.group(1) if match else name


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


def _tar_problem(exn: Exception) -> tuple[str, bool]:
    """What a webdataset / tarfile exception says, in words, and whether it breaks off the shard (then
    it is reported once, however many levels report it)."""
    text = str(exn.args[0]) if getattr(exn, "args", None) else type(exn).__name__
    text = re.sub(r" @ <.*$", "", text, flags=re.S)[:300]
    if "duplicate file name" in text:
        name = text.split(":", 1)[0]
        return f"member {name} appears twice in a row; the second copy is not read", False
    return f"the tar data cannot be read past this point ({type(exn).__name__}: {text}); the rest of the shard is lost", True


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
