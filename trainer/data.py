"""The training data stream: shards -> items -> shuffled -> batches, split by rank and worker, resumable.

Layout. Each rank runs ``num_streams`` logical streams (one per DataLoader worker; one when the
training process reads itself). For epoch ``e`` the shard list is permuted with a seed made of
(seed, e); rank ``r`` takes every ``world_size``-th shard from ``r``, and its stream ``s`` every
``num_streams``-th of those. When there are fewer shards than streams in the whole job, every stream
reads every shard and keeps every N-th item instead (N = world_size x num_streams): correct, but each
stream reads all the bytes, so a warning says to write more shards.

Within a stream, samples are read in shard order; a segment is joined with up to ``concat_max - 1``
following segments of the same video with probability ``concat_prob`` (the paper's random
concatenation of neighbouring sentences); the resulting items pass a shuffle buffer; batches are
groups of consecutive items. Every random choice is drawn from a generator seeded by (seed, purpose,
epoch, rank, stream, position), never from history, so a stream rebuilt at a saved position
continues exactly as the uninterrupted one would.

Position. A stream's position is (epoch, items consumed in that epoch). Resuming replays the
stream's raw samples up to the position without decoding arrays or building examples (it reads the
tar bytes and parses the small JSON metadata; ``tests/benchmarks/bench_loader.py`` measures it), so
no sample is seen twice or skipped within an epoch. The DataLoader hands out batches from its workers
in turn; the trainer records how many batches it consumed, and the next loader rotates which worker
serves which stream so that the turn order continues too.

Another layout, exactly once. A checkpoint written by N ranks x V streams resumes on M ranks x W
streams (the layout is ``world_size x num_streams``; global stream ``g = rank x num_streams +
stream``). What an old stream has consumed is a prefix of its sequence of items, and that sequence
is fully determined by its spec: the epoch's shard list, the join and shuffle draws are positional.
So the unconsumed part of an epoch is, for each old stream ``g``, its sequence after its first
``consumed[g]`` items: the items still in its shuffle buffer, the rest of a shard it was reading,
and the shards it had not opened, in the order it would have read them. The rule, applied to every
epoch that some old stream had begun and not finished:

- the old layout and each old stream's consumption of that epoch (a count; ``None`` when it had
  moved past the epoch, 0 when it had not reached it) are recorded as an ``EpochPhase``;
- with ``m = min(G_old, G_new)``, old stream ``g`` is shared by the new streams ``j`` with
  ``j % m == g % m``; the k-th item of its remainder goes to the ``k % s``-th of those ``s`` streams
  (shrinking: each new stream takes whole remainders; growing: each remainder is dealt among the
  new streams that share it). A new stream reads its shares of the old streams in order of ``g``;
- the new streams start at the oldest such epoch; an epoch they reach that has no phase is read
  with the new layout's own partition. So the epoch in progress finishes with every sample not yet
  consumed, each exactly once across the new streams, and the next starts the new partition.

A second change within the epoch adds a second phase: the streams it cuts short are themselves
remainder streams, rebuilt the same way from the phase before (``stream_items`` recurses), so the
rule composes (2 -> 1 -> 3 ranks). Resuming never decodes the skipped items: it replays their raw
samples as a same-layout resume does (a remainder dealt among s new streams is read by each of
them, for the rest of that one epoch). At each change, the phases of epochs that every stream had
left are dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import signal
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from videobert.shards import reader, schema
from videobert.trainer.example_builder import TrainingItem, join_samples

log = logging.getLogger(__name__)

# Purposes of the positional random generators (part of their seed).
_SHARD_ORDER, _JOIN, _SHUFFLE, _BATCH = 1, 2, 3, 4


def positional_rng(*parts: int) -> np.random.Generator:
    """A generator determined only by its integer seed parts."""
    return np.random.default_rng([int(p) & 0xFFFFFFFF for p in parts])


@dataclass
class StreamPosition:
    epoch: int = 0
    items: int = 0
    """Items consumed in ``epoch`` (after joining and shuffling)."""


@dataclass(frozen=True)
class EpochPhase:
    """The part of an epoch that one layout read before the job changed to another."""

    world_size: int
    num_streams: int
    consumed: tuple[int | None, ...]
    """Per global stream of that layout: items of the epoch it had consumed (None: all of them)."""

    @property
    def total_streams(self) -> int:
        return self.world_size * self.num_streams

    def to_dict(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "num_streams": self.num_streams, "consumed": list(self.consumed)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EpochPhase":
        return cls(int(d["world_size"]), int(d["num_streams"]), tuple(d["consumed"]))


History = tuple[tuple[int, tuple[EpochPhase, ...]], ...]
"""(epoch, its phases under earlier layouts), by epoch: what ``repartition`` records."""


@dataclass(frozen=True, kw_only=True)
class StreamSpec:
    """Everything that determines one logical stream's sequence of items."""

    urls: tuple[str, ...]
    seed: int
    rank: int = 0
    world_size: int = 1
    stream: int = 0
    num_streams: int = 1
    shuffle_buffer: int = 512
    concat_prob: float = 0.0
    concat_max: int = 1
    shuffle: bool = True
    history: History = ()
    """Epochs begun under earlier layouts of the job (see the module docstring)."""

    @property
    def total_streams(self) -> int:
        return self.world_size * self.num_streams

    @property
    def global_stream(self) -> int:
        return self.rank * self.num_streams + self.stream

    def phases(self, epoch: int) -> tuple[EpochPhase, ...]:
        return dict(self.history).get(epoch, ())

    def as_global_stream(self, g: int, world_size: int, num_streams: int, history: History) -> "StreamSpec":
        """The spec of global stream ``g`` of another layout."""
        return dataclasses.replace(self, rank=g // num_streams, world_size=world_size, stream=g % num_streams,
                                   num_streams=num_streams, history=history)


def epoch_shards(spec: StreamSpec, epoch: int) -> tuple[list[str], int | None]:
    """This stream's shards for an epoch, and the item modulo when shards are too few to split."""
    urls = list(spec.urls)
    if spec.shuffle:
        order = positional_rng(spec.seed, _SHARD_ORDER, epoch).permutation(len(urls))
        urls = [urls[i] for i in order]
    if len(urls) < spec.total_streams:
        return urls, spec.total_streams
    mine = urls[spec.rank :: spec.world_size]
    return mine[spec.stream :: spec.num_streams], None


@dataclass
class ReadErrors:
    """Problems met while reading; the counts go to the metrics, the messages to the log."""

    count: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=20))

    def __call__(self, url: str, exc: Exception) -> None:
        self.count += 1
        self.recent.append(f"{url}: {exc}")
        log.warning("skipped unreadable data in %s: %s", url, exc)


def _light_samples(urls: list[str], errors: ReadErrors) -> Iterator[schema.Sample]:
    """Samples with metadata and text decoded but arrays left as raw bytes in ``raw``."""
    for raw in reader.iter_raw_samples(urls, on_error=errors):
        try:
            sample = schema.decode_sample(raw, decode_arrays=False)
        except schema.ShardFormatError as e:
            errors(str(raw.get("__url__", "?")), e)
            continue
        yield _RawSample(sample, raw)


@dataclass(frozen=True)
class _RawSample:
    """A sample whose arrays are decoded only when the item is built into an example."""

    head: schema.Sample
    raw: dict[str, Any]

    @property
    def meta(self) -> schema.SampleMeta:
        return self.head.meta

    @property
    def key(self) -> str:
        return self.head.key

    def decode(self) -> schema.Sample:
        return schema.with_arrays(self.head, self.raw)


def join_neighbours(samples: Iterator[_RawSample], spec: StreamSpec, epoch: int) -> Iterator[list[_RawSample]]:
    """Groups of consecutive samples of one video: 1 + k members, k drawn per group start."""
    pending: deque[_RawSample] = deque()
    source = iter(samples)
    while True:
        if not pending:
            nxt = next(source, None)
            if nxt is None:
                return
            pending.append(nxt)
        first = pending.popleft()
        group = [first]
        extra = _extra_neighbours(spec, epoch, first.key)
        while len(group) <= extra:
            if not pending:
                nxt = next(source, None)
                if nxt is None:
                    break
                pending.append(nxt)
            if pending[0].meta.video_id != first.meta.video_id:
                break
            group.append(pending.popleft())
        yield group


def _extra_neighbours(spec: StreamSpec, epoch: int, key: str) -> int:
    if spec.concat_max <= 1 or spec.concat_prob <= 0:
        return 0
    join, count = _hash_uniforms(spec.seed, _JOIN, epoch, key)
    if join >= spec.concat_prob:
        return 0
    return 1 + int(count * (spec.concat_max - 1))


def _hash_uniforms(*parts: object) -> tuple[float, float]:
    """Two uniforms in [0, 1) determined by ``parts`` (a per-sample draw ~50x cheaper than a generator)."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=16).digest()
    a, b = int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")
    return a / 2**64, b / 2**64


def shuffled(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """A reservoir shuffle: fill ``size`` items, then emit a random one for each new item."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(rng.integers(len(buffer)))
        buffer[j], item = item, buffer[j]
        yield item
    order = rng.permutation(len(buffer))
    for j in order:
        yield buffer[j]


def epoch_items(spec: StreamSpec, epoch: int, errors: ReadErrors) -> Iterator[list[_RawSample]]:
    """The stream's items for one epoch, in the order they are consumed."""
    urls, modulo = epoch_shards(spec, epoch)
    items: Iterator[list[_RawSample]] = join_neighbours(_light_samples(urls, errors), spec, epoch)
    if modulo is not None:
        items = itertools.islice(items, spec.global_stream, None, modulo)
    if spec.shuffle and spec.shuffle_buffer > 1:
        rng = positional_rng(spec.seed, _SHUFFLE, epoch, spec.rank, spec.stream)
        items = shuffled(items, spec.shuffle_buffer, rng)
    return items


def stream_items(spec: StreamSpec, epoch: int, errors: ReadErrors) -> Iterator[list[_RawSample]]:
    """The stream's items for one epoch in consumption order: the epoch's own partition, or, for an
    epoch an earlier layout began, this stream's shares of what that layout left unread."""
    phases = spec.phases(epoch)
    if not phases:
        return epoch_items(spec, epoch, errors)
    return itertools.chain.from_iterable(_remainder_shares(spec, epoch, phases, errors))


def _remainder_shares(spec: StreamSpec, epoch: int, phases: tuple[EpochPhase, ...],
                      errors: ReadErrors) -> Iterator[Iterator[list[_RawSample]]]:
    last, earlier = phases[-1], phases[:-1]
    old_total, new_total, me = last.total_streams, spec.total_streams, spec.global_stream
    m = min(old_total, new_total)
    history = ((epoch, earlier),) if earlier else ()
    for g in range(me % m, old_total, m):
        consumed = last.consumed[g]
        if consumed is None:
            continue
        sharers = list(range(g % m, new_total, m))
        old = spec.as_global_stream(g, last.world_size, last.num_streams, history)
        rest = itertools.islice(stream_items(old, epoch, errors), consumed, None)
        yield itertools.islice(rest, sharers.index(me), None, len(sharers))


def repartition(positions: dict[int, StreamPosition], world_size: int, num_streams: int,
                history: History) -> tuple[int, History]:
    """Record where the streams of a layout stopped (``positions``: global stream -> position, one per
    stream of the layout). Returns the epoch every stream of the next layout starts at, and the
    history that layout's specs carry."""
    epochs = [positions[g].epoch for g in range(world_size * num_streams)]
    first, last = min(epochs), max(epochs)
    kept = {e: phases for e, phases in history if e >= first}
    for e in range(first, last + 1):
        consumed = tuple(_consumed_of(positions[g], e) for g in range(world_size * num_streams))
        kept[e] = kept.get(e, ()) + (EpochPhase(world_size, num_streams, consumed),)
    return first, tuple(sorted(kept.items()))


def _consumed_of(position: StreamPosition, epoch: int) -> int | None:
    if position.epoch > epoch:
        return None
    return position.items if position.epoch == epoch else 0


class BatchStream:
    """One logical stream turned into an endless sequence of batches, from a saved position."""

    def __init__(self, spec: StreamSpec, position: StreamPosition, build: Callable[[list[TrainingItem], np.random.Generator], dict],
                 batch_size: int, max_epochs: int | None = None):
        self.spec = spec
        self.position = StreamPosition(**asdict(position))
        self.build = build
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.errors = ReadErrors()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pos = self.position
        items = itertools.islice(stream_items(self.spec, pos.epoch, self.errors), pos.items, None)
        empty_epochs = 0
        while True:
            group, taken, bad_before = [], _Taken(), self.errors.count
            while len(group) < self.batch_size:
                item = next(items, None)
                if item is None:
                    # An epoch whose remainder share is empty is no sign of unreadable data.
                    plain = not self.spec.phases(pos.epoch)
                    empty_epochs = empty_epochs + 1 if pos.items == 0 and plain else 0
                    if self.max_epochs is not None and pos.epoch + 1 >= self.max_epochs:
                        if group:
                            yield self._batch(group, taken, pos, bad_before)
                        return
                    self._check_not_empty(empty_epochs)
                    pos.epoch, pos.items = pos.epoch + 1, 0
                    items = stream_items(self.spec, pos.epoch, self.errors)
                    continue
                pos.items += 1
                segment = self._decode(item)
                if segment is not None:
                    group.append(segment)
                    taken.add(item, pos.epoch)
            yield self._batch(group, taken, pos, bad_before)

    def _decode(self, item: list[_RawSample]) -> TrainingItem | None:
        try:
            return join_samples([s.decode() for s in item])
        except schema.ShardFormatError as e:
            self.errors(str(item[0].raw.get("__url__", "?")), e)
            return None

    def _batch(self, group: list[TrainingItem], taken: "_Taken", pos: StreamPosition, bad_before: int) -> dict[str, Any]:
        rng = positional_rng(self.spec.seed, _BATCH, pos.epoch, self.spec.rank, self.spec.stream, pos.items)
        batch = self.build(group, rng)
        batch["stream"] = np.int64(self.spec.stream)
        batch["epoch"] = np.int64(pos.epoch)
        batch["items"] = np.int64(pos.items)
        batch["bad_samples"] = np.int64(self.errors.count - bad_before)
        batch["segments"] = np.int64(len(taken.keys))
        batch[SAMPLE_KEYS] = np.array(taken.keys, dtype=np.str_)
        batch[SAMPLE_EPOCHS] = np.array(taken.epochs, dtype=np.int64)
        return batch

    def _check_not_empty(self, empty_epochs: int) -> None:
        if empty_epochs >= 2:
            raise RuntimeError(
                f"stream {self.spec.stream} of rank {self.spec.rank} found no readable samples in two "
                f"epochs over {len(self.spec.urls)} shard(s) ({self.errors.count} read errors; last: "
                f"{list(self.errors.recent)[-1:]}); write more samples than ranks x workers, or fix the shards"
            )


SAMPLE_KEYS, SAMPLE_EPOCHS = "sample_keys", "sample_epochs"
"""Batch entries naming the samples its examples were built from, and the epoch each was read in
(the trainer's audit; not model inputs)."""


@dataclass
class _Taken:
    keys: list[str] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)

    def add(self, item: list[_RawSample], epoch: int) -> None:
        self.keys += [s.key for s in item]
        self.epochs += [epoch] * len(item)


class TrainStreams(IterableDataset):
    """The rank's streams as a DataLoader dataset; worker ``w`` serves stream ``(w + rotation) % n``."""

    def __init__(self, spec: StreamSpec, positions: dict[int, StreamPosition], rotation: int,
                 build: Callable, batch_size: int):
        super().__init__()
        self.spec = spec
        self.positions = positions
        self.rotation = rotation
        self.build = build
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        if workers != self.spec.num_streams:
            raise RuntimeError(f"{workers} loader workers for {self.spec.num_streams} streams")
        stream = (worker + self.rotation) % workers
        spec = dataclasses.replace(self.spec, stream=stream)
        yield from BatchStream(spec, self.positions.get(stream, StreamPosition()), self.build, self.batch_size)


def make_loader(spec: StreamSpec, positions: dict[int, StreamPosition], batches_consumed: int,
                build: Callable, batch_size: int, num_workers: int, prefetch_factor: int) -> DataLoader:
    """The rank's DataLoader; ``spec.num_streams`` must equal ``max(1, num_workers)``."""
    dataset = TrainStreams(spec, positions, batches_consumed % spec.num_streams, build, batch_size)
    extra = dict(prefetch_factor=prefetch_factor, persistent_workers=False) if num_workers > 0 else {}
    if num_workers > 0:
        extra["worker_init_fn"] = _leave_stop_signals_to_the_trainer
    # A private generator: creating the loader's iterator must not consume the global torch RNG,
    # whose state (dropout) is part of an exactly resumable checkpoint.
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, generator=torch.Generator().manual_seed(0), **extra)


def _leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    # Schedulers (SLURM, torchrun, Kubernetes) signal every process of a job. A worker that died
    # of SIGTERM would take the training process down before it could checkpoint; the workers end
    # when the training process closes the loader (or exits) instead.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
