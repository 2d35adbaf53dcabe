"""Shards in object storage: any place fsspec reaches (``s3://``, ``gs://``, ``az://``, ``file://``).

Addresses. A URL with a scheme other than ``file`` is remote (``is_remote``); a plain path or a
``file://`` URL stays on the local code paths. ``pipe:`` is not a URL here: it runs a command, and
``shards.reader`` keeps it apart. Reading an object URL runs no command: the stores are reached
through fsspec's own clients (s3fs, gcsfs, adlfs), never through a shell.

Credentials and endpoints come from the standard places (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, profiles, instance roles, ``AWS_ENDPOINT_URL`` for an S3-compatible
store; ``GOOGLE_APPLICATION_CREDENTIALS``; ``AZURE_STORAGE_*``). This module never takes them as
arguments, so nothing the stages write can hold them, and ``shown`` drops any user part of a URL
before it is logged or written.

Retries. A transient error (connection refused or reset, a timeout, a 5xx answer, throttling) is
retried with exponential backoff for up to ``VIDEOBERT_STORAGE_RETRY_SECONDS`` seconds (default
300) per operation; then ``StorageError`` names the object. A missing object or a refused
credential is not retried. A stream being read (``open_stream``) asks for the object in ranged reads,
the next blocks fetched ahead in the background, and tries each again from the byte it starts at, so
a reader sees the same bytes as without the outage.

Writing. An object store has no rename, but an object becomes visible only when its upload
completes: a single PUT, or a multipart upload whose completion is its last step, so a writer
killed at any moment leaves no object (at most an unfinished multipart upload, which no listing
shows; a bucket lifecycle rule removes those). The stages write a remote output folder through a
local working folder (``working_folder``): it starts with the folder's records (``run.json``,
``summary.json``, ``errors.jsonl``, the stats files, and an empty stand-in for every complete
shard), and each file the stage commits locally is uploaded whole (``published``) in the order it
was committed: a shard's tar before its stats file, which stays the commit point. A part resumes
from what the listing shows complete, exactly as from a local folder.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import fnmatch
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from videobert.models.errors import VideoBertError

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_SECONDS_VARIABLE = "VIDEOBERT_STORAGE_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 300.0
SCRATCH_VARIABLE = "VIDEOBERT_SCRATCH"
"""Where remote outputs are staged and remote inputs fetched (default: the system's temporary folder)."""

READ_BLOCK_BYTES = 8 << 20
"""Bytes asked for per ranged read of a streamed object."""
READ_AHEAD_BLOCKS = 2
"""Blocks of a streamed object fetched ahead of the one being read, each by its own background thread
(two connections at once: one alone leaves the reader waiting on a fast store)."""

TRUSTED_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "file")
"""Schemes a config found inside a checkpoint or an export may name (README, "Trust"): object stores
reached with the user's own credentials, where reading runs no command and talks to no host the
config chooses."""


class StorageError(VideoBertError, OSError):
    """An object could not be read or written (after retries, or at once for a permanent error)."""


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(url: str) -> str | None:
    """The URL's scheme (``s3``), or None for a plain path."""
    match = _SCHEME.match(str(url))
    return match.group(1).lower() if match else None


def is_remote(url: str | os.PathLike) -> bool:
    """A URL that fsspec reaches and that is not a local file (``pipe:`` is neither)."""
    found = scheme(str(url))
    return found is not None and found != "file"


def local_path(url: str | os.PathLike) -> str:
    """A plain path for a local address (``file:///x`` -> ``/x``); others unchanged."""
    text = str(url)
    return text[len("file://"):] if scheme(text) == "file" else text


_USER_PART = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@")


def shown(url: str | os.PathLike) -> str:
    """The URL as it may be logged or written: without a ``user:secret@`` part."""
    return _USER_PART.sub(r"\1", str(url))


def has_user_part(url: str) -> bool:
    return _USER_PART.match(url) is not None


def join(url: str, *names: str) -> str:
    return "/".join([str(url).rstrip("/"), *names])


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a URL; a ``StorageError`` names a scheme fsspec does
    not know or whose package is missing (``pip install 'videobert[s3]'``)."""
    import fsspec

    try:
        # No listings cache: parts on other machines add objects while this process runs, and a
        # resume must see what is there now.
        return fsspec.core.url_to_fs(url, use_listings_cache=False)
    except (ImportError, ValueError) as e:
        raise StorageError(f"cannot open {shown(url)}: {e} (object storage needs `pip install 'videobert[s3]'`, "
                           "or [gcs] / [azure])") from None


_FORKING: list[Any] = []
"""The store clients of this process while it forks (``_disown_inherited_clients``)."""
_INHERITED: list[Any] = []
"""A forked child's copies of its parent's store clients: held, never ended."""


def _store_clients() -> list[Any]:
    """The filesystem instances fsspec holds in its caches, for every implementation imported."""
    spec = sys.modules.get("fsspec.spec")
    if spec is None:
        return []
    found, classes = [], [spec.AbstractFileSystem]
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        found.extend(vars(cls).get("_cache", {}).values())
    return found


def _hold_clients() -> None:
    _FORKING[:] = _store_clients()


def _disown_inherited_clients() -> None:
    """In a forked child (a DataLoader worker, a prepare worker) the parent's clients are the parent's.
    Ended here, a copy's end would run on this process's event loop, which is not the one the client
    was made on (it fails, "attached to a different loop"), or reach into the parent's connections.
    Their finalizers are detached and the copies held, never ended; this process opens clients of
    its own (fsspec empties its cache in a child)."""
    for client in _FORKING:
        for ref in weakref.getweakrefs(client):
            if isinstance(ref.__callback__, weakref.finalize):
                ref.__callback__.detach()
    _INHERITED.extend(_FORKING)
    _FORKING.clear()


os.register_at_fork(before=_hold_clients, after_in_child=_disown_inherited_clients, after_in_parent=_FORKING.clear)


# ---------------------------------------------------------------------------------------------------
# Retries

_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
_PERMANENT_NAMES = {"NoCredentialsError", "PartialCredentialsError", "ParamValidationError", "NoRegionError",
                    "InvalidConfigError", "UnknownServiceError"}
"""The clients' errors that no retry mends (missing credentials or settings)."""


def is_transient(exc: BaseException) -> bool:
    """Whether an error may pass if the operation is tried again (the network or the server)."""
    if isinstance(exc, (StorageError, *_PERMANENT)) or type(exc).__name__ in _PERMANENT_NAMES:
        return False
    if isinstance(exc, (OSError, TimeoutError, ConnectionError)):
        return True
    module = type(exc).__module__ or ""
    return module.split(".")[0] in ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "google", "azure")


def retry_seconds() -> float:
    value = os.environ.get(RETRY_SECONDS_VARIABLE, "")
    try:
        return float(value) if value else DEFAULT_RETRY_SECONDS
    except ValueError:
        raise StorageError(f"{RETRY_SECONDS_VARIABLE}={value!r} is not a number of seconds") from None


class Backoff:
    """Waits between tries: 0.5 s doubling up to 10 s, until ``retry_seconds()`` have passed since the
    first failure; then ``StorageError`` naming ``what``."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.first_failure: float | None = None
        self.tries = 0

    def wait(self, exc: BaseException) -> None:
        if not is_transient(exc):
            raise StorageError(f"{self.what}: {_reason(exc)}") from exc
        now = time.monotonic()
        self.first_failure = self.first_failure or now
        bound = retry_seconds()
        if now - self.first_failure >= bound:
            raise StorageError(f"{self.what}: still failing after {self.tries + 1} tries over {bound:g} s "
                               f"({_reason(exc)}); is the store reachable? ({RETRY_SECONDS_VARIABLE} sets the bound)"
                               ) from exc
        delay = min(10.0, 0.5 * 2 ** self.tries, max(0.0, self.first_failure + bound - now))
        self.tries += 1
        log.warning("%s: %s; trying again in %.1f s", self.what, _reason(exc), delay)
        time.sleep(delay)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def retrying(what: str, operation: Callable[[], T]) -> T:
    """``operation()``, tried again on transient errors (see ``Backoff``)."""
    backoff = Backoff(what)
    while True:
        try:
            return operation()
        except Exception as e:  # noqa: BLE001 - sorted by is_transient in Backoff.wait
            backoff.wait(e)


# ---------------------------------------------------------------------------------------------------
# Reading


class RetryingReader(io.RawIOBase):
    """A remote object read front to back (seekable) in ranged reads of ``READ_BLOCK_BYTES``, the next
    ``READ_AHEAD_BLOCKS`` fetched by a background thread while the reader works through the current
    one, so that the transfer overlaps the decoding. A transient error is retried from the byte the
    block starts at (``Backoff``); once the retries are spent the reader gets ``StorageError``."""

    def __init__(self, url: str, size: int | None = None) -> None:
        super().__init__()
        self.url = url
        self.name = shown(url)
        self.fs, self.path = filesystem(url)
        self.size = size if size is not None else object_size(url)
        self.ahead = READ_AHEAD_BLOCKS
        self.position = 0
        self._block = b""
        self._block_start = 0
        self._pending: collections.deque[tuple[int, concurrent.futures.Future[bytes]]] = collections.deque()
        self._next_start = 0  # where the next block to ask for starts
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._closing = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = base + offset
        return self.position

    def readinto(self, buffer: Any) -> int:
        if self.position >= self.size:
            return 0
        offset = self.position - self._block_start
        if not 0 <= offset < len(self._block):
            self._take_block()
            offset = 0
        view = memoryview(buffer).cast("B")
        count = min(len(view), len(self._block) - offset)
        view[:count] = self._block[offset : offset + count]
        self.position += count
        return count

    def start(self) -> None:
        """Ask for the first blocks now, before the first read."""
        self._fill(1 + self.ahead)

    def ask(self, start: int, end: int) -> concurrent.futures.Future[bytes]:
        """Bytes ``start:end`` of the object, fetched (and retried) in the background; for a check
        that reads a piece out of order (a tar's last blocks) without a wait of its own."""
        return self._pool().submit(self._fetch, start, end)

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(self.ahead, thread_name_prefix="videobert-read")
        return self._executor

    def _take_block(self) -> None:
        """Makes the block that starts at ``position`` current, asking for the ones after it."""
        if not self._pending or self._pending[0][0] != self.position:
            self._cancel()
            self._next_start = self.position
        self._fill(1 + self.ahead)
        start, future = self._pending.popleft()
        self._fill(self.ahead)
        self._block, self._block_start = future.result(), start

    def _fill(self, blocks: int) -> None:
        while len(self._pending) < blocks and self._next_start < self.size:
            start, end = self._next_start, min(self.size, self._next_start + READ_BLOCK_BYTES)
            self._pending.append((start, self._pool().submit(self._fetch, start, end)))
            self._next_start = end

    def _fetch(self, start: int, end: int) -> bytes:
        backoff = Backoff(f"reading {self.name} at byte {start}")
        while True:
            if self._closing:
                raise StorageError(f"reading {self.name} at byte {start}: the stream was closed")
            try:
                data = self.fs.cat_file(self.path, start=start, end=end)
                if len(data) != end - start:
                    raise ConnectionError(f"bytes {start}-{end} of {self.size} came back as {len(data)} bytes")
                return data
            except Exception as e:  # noqa: BLE001 - sorted by is_transient in Backoff.wait
                if self._closing:
                    raise
                backoff.wait(e)

    def _cancel(self) -> None:
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()

    def close(self) -> None:
        if not self.closed:
            self._closing = True  # a fetch being retried gives up at its next try
            self._cancel()
            self._block = b""
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
        super().close()


def open_stream(url: str, size: int | None = None) -> io.BufferedReader:
    """A buffered, retrying, read-ahead stream of a remote object (``RetryingReader``)."""
    return io.BufferedReader(RetryingReader(url, size), buffer_size=1 << 20)


def object_size(url: str) -> int:
    fs, path = filesystem(url)
    return int(retrying(f"reading the size of {shown(url)}", lambda: fs.size(path)))


def read_range(url: str, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of a remote object."""
    fs, path = filesystem(url)
    return retrying(f"reading {shown(url)}", lambda: fs.cat_file(path, start=start, end=end))


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return retrying(f"reading {shown(url)}", lambda: fs.cat_file(path))


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return bool(retrying(f"looking for {shown(url)}", lambda: fs.exists(path)))


def is_file(url: str) -> bool:
    fs, path = filesystem(url)
    return bool(retrying(f"looking for {shown(url)}", lambda: fs.isfile(path)))


def glob(url: str) -> list[str]:
    """Objects matching a glob pattern, as URLs, sorted."""
    fs, path = filesystem(url)
    found = retrying(f"listing {shown(url)}", lambda: fs.glob(path))
    return sorted(_as_url(url, fs, p) for p in found)


def list_files(url: str) -> dict[str, int]:
    """Every object under a prefix (at any depth): name relative to the prefix -> size. One listing."""
    fs, path = filesystem(url)
    path = path.rstrip("/")
    try:
        found = retrying(f"listing {shown(url)}", lambda: fs.find(path, detail=True))
    except StorageError as e:
        if isinstance(e.__cause__, FileNotFoundError):
            return {}
        raise
    return {name[len(path) + 1:]: int(info.get("size") or 0) for name, info in found.items()
            if name.startswith(path + "/") and info.get("type", "file") == "file"}


def _as_url(original: str, fs: Any, path: str) -> str:
    protocol = scheme(original) or "file"
    return path if protocol == "file" else fs.unstrip_protocol(path)


def fetch(url: str, local: str | Path) -> Path:
    """Download an object to a local file, whole, via a temporary name."""
    fs, path = filesystem(url)
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    temporary = local.with_name(f"{local.name}.{os.getpid()}.partial")
    retrying(f"downloading {shown(url)}", lambda: fs.get_file(path, str(temporary)))
    os.replace(temporary, local)
    return local


def local_file(url: str | os.PathLike) -> str:
    """A path to read a file at: itself when local, else a cached local copy (``cached_copy``)."""
    url = local_path(url)
    return str(cached_copy(url)) if is_remote(url) else url


def cached_copy(url: str) -> Path:
    """A local copy of a (small) remote object, such as a codebook, fetched once per content: the
    cache key is the URL and the object's size and modification stamp."""
    fs, path = filesystem(url)
    info = retrying(f"looking for {shown(url)}", lambda: fs.info(path))
    stamp = f"{shown(url)}|{info.get('size')}|{info.get('ETag') or info.get('LastModified') or info.get('mtime')}"
    digest = hashlib.blake2b(stamp.encode(), digest_size=10).hexdigest()
    local = scratch_root() / "objects" / digest / Path(path).name
    return local if local.is_file() else fetch(url, local)


# ---------------------------------------------------------------------------------------------------
# Writing


def put_bytes(url: str, data: bytes) -> None:
    """Write an object whole (one PUT: visible complete or not at all)."""
    fs, path = filesystem(url)
    retrying(f"writing {shown(url)}", lambda: fs.pipe_file(path, data))


def upload(local: str | Path, url: str) -> None:
    """Upload a local file as one object (a single PUT, or a multipart upload completed last)."""
    fs, path = filesystem(url)
    retrying(f"uploading {local} to {shown(url)}", lambda: fs.put_file(str(local), path))


def remove(url: str) -> None:
    fs, path = filesystem(url)
    with contextlib.suppress(FileNotFoundError):
        retrying(f"removing {shown(url)}", lambda: fs.rm_file(path))


# ---------------------------------------------------------------------------------------------------
# A stage's remote output folder, worked through a local one

RECORD_PATTERN = re.compile(
    r"^(?:features/)?(?:part-\d+/)?"
    r"(?:run\.json|summary\.json|errors\.jsonl|shard-\d+\.stats\.json|features-\d+\.json|codebook\.safetensors)$")
"""The small files a working folder starts with (a codebook folder's feature pass, ``features/``,
included: each input shard's record there is the commit point of its feature file)."""
SHARD_PATTERN = re.compile(r"^(?:part-\d+/)?shard-\d+\.tar$")

WORKING_FOLDERS_VARIABLE = "VIDEOBERT_WORKING_FOLDERS"
"""Local working folder -> the remote folder it stands for, as JSON in the environment, so that the
worker processes a stage starts (tokenize spawns them) publish what they commit too."""


def _working_folders() -> dict[Path, str]:
    raw = os.environ.get(WORKING_FOLDERS_VARIABLE)
    return {Path(local): remote for local, remote in json.loads(raw).items()} if raw else {}


def _set_working_folders(folders: dict[Path, str]) -> None:
    if folders:
        os.environ[WORKING_FOLDERS_VARIABLE] = json.dumps({str(local): remote for local, remote in folders.items()})
    else:
        os.environ.pop(WORKING_FOLDERS_VARIABLE, None)


def scratch_root() -> Path:
    return Path(os.environ.get(SCRATCH_VARIABLE) or tempfile.gettempdir()) / "videobert-scratch"


@contextlib.contextmanager
def working_folder(out: str | os.PathLike) -> Iterator[str]:
    """The folder a stage writes: ``out`` itself when local; for a remote ``out``, a local working
    folder holding its records (see the module docstring), whose commits are uploaded as they happen.
    Removed when the stage ends; a stage killed leaves only what it had uploaded."""
    out = local_path(out)
    if not is_remote(out):
        yield out
        return
    digest = hashlib.blake2b(shown(out).encode(), digest_size=10).hexdigest()
    local = scratch_root() / "work" / f"{digest}-{os.getpid()}"
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    _set_working_folders({**_working_folders(), local: str(out).rstrip("/")})
    try:
        pull_records(local)
        yield str(local)
    finally:
        _set_working_folders({k: v for k, v in _working_folders().items() if k != local})
        shutil.rmtree(local, ignore_errors=True)


def remote_of(path: str | os.PathLike) -> str | None:
    """The remote URL a local working file stands for, or None."""
    path = Path(path).absolute()
    for local, remote in _working_folders().items():
        if path == local or local in path.parents:
            return join(remote, *path.relative_to(local).parts) if path != local else remote
    return None


def named(path: str | os.PathLike) -> str:
    """How to call a file or folder in messages: its remote URL for a working folder's, else itself."""
    return remote_of(path) or str(path)


def pull_records(folder: str | os.PathLike) -> None:
    """Refresh a working folder from its remote folder: the records, and an empty stand-in for each
    shard whose tar is complete (its stats file exists)."""
    local = Path(folder).absolute()
    remote = remote_of(local)
    if remote is None:
        return
    listed = list_files(remote)
    for name in listed:
        if RECORD_PATTERN.match(name):
            fetch(join(remote, name), local / name)
        elif SHARD_PATTERN.match(name) and name[: -len(".tar")] + ".stats.json" in listed:
            (local / name).parent.mkdir(parents=True, exist_ok=True)
            (local / name).touch()


def published(path: str | os.PathLike) -> None:
    """Called once a file of a working folder is committed: upload it whole. A shard's tar is then
    emptied locally (its stand-in), so the working folder holds one shard at most."""
    remote = remote_of(path)
    if remote is None:
        return
    upload(path, remote)
    if str(path).endswith(".tar"):
        os.truncate(path, 0)


def published_file(path: str | os.PathLike) -> Path:
    """A committed file of a working folder, here: fetched from its remote folder when only there
    (another part's, or an earlier run's). A local path is returned as it is."""
    path = Path(path)
    remote = remote_of(path)
    if remote is not None and not path.is_file():
        fetch(remote, path)
    return path


def remove_published(folder: str | os.PathLike) -> None:
    """Remove a working folder's subfolder here and every object under its remote prefix."""
    if Path(folder).exists():
        shutil.rmtree(folder)
    remote = remote_of(folder)
    if remote is None:
        return
    for name in list_files(remote):
        remove(join(remote, name))


def unpublished(folder: str | os.PathLike, patterns: Sequence[str]) -> None:
    """Remove a working folder's remote objects matching the glob patterns (a stage starting over)."""
    remote = remote_of(folder)
    if remote is None:
        return
    for name in list_files(remote):
        if "/" not in name and any(fnmatch.fnmatch(name, p) for p in patterns):
            remove(join(remote, name))
