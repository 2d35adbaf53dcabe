"""Weighted mixing of training corpora: ``data.train`` as a list of sources, each with a weight.

    data:
      train:
        - {path: shards/howto100m, weight: 0.75}
        - {path: [shards/youcook2, shards/youcook2-extra], weight: 0.25, name: youcook2}

A plain list of shard specs (``data.train: [a, b]``) stays one source, read by ``trainer.data`` as
before.

Unit: a micro-batch. Every logical stream of the run (rank x loader worker, ``trainer.data``) holds
one stream per source, over that source's shards alone, with the source's own epochs and position:
a small source repeats, each of its epochs reads each of its samples exactly once, and a large one
is not forced to finish. For each micro-batch the stream picks a source by smooth weighted round
robin: every source's credit grows by its weight, the source with the most credit (the first on a
tie) is chosen and its credit lowered by the sum of the weights. The choice depends on the credits
alone, so it is deterministic, and over any run of micro-batches of a stream each source gets its
share to within one micro-batch. A fresh round robin starts as many choices into its cycle as its
global stream's number, so that the streams of a job do not all take the same source at once. A
micro-batch comes from one source, which makes the loss per source exact (TensorBoard's
``train/loss/NAME``); a global batch (micro-batches x accumulation x ranks) mixes them. The audit
names the source of each line.

Position. Per stream and source: (epoch, items consumed in it), plus the stream's credits; saved in
``TrainerState.mix``. The same layout resumes exactly: each source stream where it stopped, the round
robin where it was. Another number of ranks or workers: each source is re-partitioned on its own,
exactly as a single source is (``trainer.data.repartition``, one history per source), so each
source's epoch in progress finishes with every sample not yet consumed, once; the credits start
again at zero. Other weights on resume: every source keeps its position and the round robin goes on
from its credits with the new weights. A source added on resume starts at its epoch 0; the position
of a source no longer named is dropped (and logged).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from videobert.trainer.data import (
    BatchStream, EpochPhase, History, StreamPosition, StreamSpec, _leave_stop_signals_to_the_trainer, repartition,
)

log = logging.getLogger(__name__)

SOURCE, CREDITS = "source", "credits"
"""Batch entries of a mixed stream: the index of the micro-batch's source, the credits after choosing it."""


@dataclass(frozen=True)
class MixedSource:
    """One source of the mix, resolved: its name, weight and shards."""

    name: str
    weight: float
    urls: tuple[str, ...]


def source_seed(seed: int, name: str) -> int:
    """The seed of a source's streams: the run's seed and the source's name (not its place in the list)."""
    digest = hashlib.blake2b(f"{seed}\0{name}".encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def choose(credits: list[float], weights: tuple[float, ...]) -> int:
    """Smooth weighted round robin: the next source; ``credits`` are updated in place."""
    for i, weight in enumerate(weights):
        credits[i] += weight
    chosen = max(range(len(credits)), key=lambda i: (credits[i], -i))
    credits[chosen] -= sum(weights)
    return chosen


# ---------------------------------------------------------------------------------------------------
# Position: TrainerState.mix, plain JSON


@dataclass
class StreamMix:
    """One stream's position in every source, and its round robin's credits (by source name)."""

    positions: dict[str, StreamPosition]
    credits: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"positions": {n: [p.epoch, p.items] for n, p in self.positions.items()}, "credits": dict(self.credits)}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> "StreamMix":
        d = d or {}
        positions = {n: StreamPosition(int(e), int(i)) for n, (e, i) in d.get("positions", {}).items()}
        return cls(positions, {n: float(c) for n, c in d.get("credits", {}).items()})


def history_to_json(history: History) -> dict[str, list[dict[str, Any]]]:
    return {str(e): [p.to_dict() for p in phases] for e, phases in history}


def history_from_json(d: dict[str, Any] | None) -> History:
    return tuple(sorted((int(e), tuple(EpochPhase.from_dict(p) for p in ps)) for e, ps in (d or {}).items()))


def stream_mix(mix: dict[str, Any], stream: int) -> StreamMix:
    return StreamMix.from_json(mix.get("streams", {}).get(str(stream)))


def set_stream_mix(mix: dict[str, Any], stream: int, value: StreamMix) -> None:
    mix.setdefault("streams", {})[str(stream)] = value.to_json()


def merged_mix(old: list[dict[str, Any]], world_size: int, num_streams: int, new_streams: int) -> dict[str, Any]:
    """The mix position of every rank of a new layout from the old ranks' (``old[r]`` is rank r's):
    each source re-partitioned on its own (``trainer.data.repartition``); credits start at zero."""
    names = list(dict.fromkeys(n for m in old for s in m.get("streams", {}).values() for n in s.get("positions", {})))
    firsts, histories = {}, {}
    for name in names:
        positions = {r * num_streams + s: stream_mix(m, s).positions.get(name, StreamPosition())
                     for r, m in enumerate(old) for s in range(num_streams)}
        history: dict[int, tuple[EpochPhase, ...]] = {}
        for m in old:
            history.update(dict(history_from_json(m.get("history", {}).get(name))))
        firsts[name], histories[name] = repartition(positions, world_size, num_streams, tuple(sorted(history.items())))
    start = StreamMix({n: StreamPosition(firsts[n], 0) for n in names}, {n: 0.0 for n in names})
    return {"streams": {str(s): start.to_json() for s in range(new_streams)},
            "history": {n: history_to_json(histories[n]) for n in names}}


# ---------------------------------------------------------------------------------------------------
# Streams


class MixedBatchStream:
    """One logical stream over every source: an endless sequence of micro-batches, each from the
    source the round robin chooses."""

    def __init__(self, specs: list[StreamSpec], weights: tuple[float, ...], position: StreamMix,
                 names: tuple[str, ...], build: Callable, batch_size: int):
        self.streams = [BatchStream(spec, position.positions.get(name, StreamPosition()), build, batch_size)
                        for spec, name in zip(specs, names)]
        self.weights = weights
        self.credits = [position.credits.get(name, 0.0) for name in names]
        if not position.credits:
            # A fresh round robin starts as far into its cycle as its global stream's number: the
            # streams of a job then take different sources at the same moment, and a global batch mixes.
            for _ in range(specs[0].global_stream if specs else 0):
                choose(self.credits, weights)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # A generator reads nothing until asked: a source the round robin never picks is never opened.
        batches = [iter(stream) for stream in self.streams]
        credits = list(self.credits)
        while True:
            chosen = choose(credits, self.weights)
            batch = next(batches[chosen])
            batch[SOURCE] = np.int64(chosen)
            batch[CREDITS] = np.array(credits, dtype=np.float64)
            yield batch


class MixedStreams(IterableDataset):
    """The rank's mixed streams as a DataLoader dataset; worker ``w`` serves stream ``(w + rotation) % n``."""

    def __init__(self, mix: "Mix", spec: StreamSpec, state_mix: dict[str, Any], rotation: int, build: Callable,
                 batch_size: int):
        super().__init__()
        self.mix, self.spec, self.state_mix = mix, spec, state_mix
        self.rotation, self.build, self.batch_size = rotation, build, batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        if workers != self.spec.num_streams:
            raise RuntimeError(f"{workers} loader workers for {self.spec.num_streams} streams")
        stream = (worker + self.rotation) % workers
        specs = self.mix.specs(dataclasses.replace(self.spec, stream=stream), self.state_mix)
        yield from MixedBatchStream(specs, self.mix.weights, stream_mix(self.state_mix, stream), self.mix.names,
                                    self.build, self.batch_size)


@dataclass(frozen=True)
class Mix:
    """The run's sources: what the trainer asks of a mixed ``data.train``."""

    sources: tuple[MixedSource, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sources)

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(s.weight for s in self.sources)

    def specs(self, spec: StreamSpec, state_mix: dict[str, Any]) -> list[StreamSpec]:
        """A stream's spec for each source: its shards, its seed, its own history of layouts."""
        histories = state_mix.get("history", {})
        return [dataclasses.replace(spec, urls=s.urls, seed=source_seed(spec.seed, s.name),
                                    history=history_from_json(histories.get(s.name))) for s in self.sources]

    def loader(self, spec: StreamSpec, state_mix: dict[str, Any], batches_consumed: int, build: Callable,
               batch_size: int, num_workers: int, prefetch_factor: int) -> DataLoader:
        """The rank's DataLoader (``spec``: the rank's layout; ``state_mix``: ``TrainerState.mix``)."""
        self.forget_dropped(state_mix)
        dataset = MixedStreams(self, spec, state_mix, batches_consumed % spec.num_streams, build, batch_size)
        extra = dict(prefetch_factor=prefetch_factor, persistent_workers=False) if num_workers > 0 else {}
        if num_workers > 0:
            extra["worker_init_fn"] = _leave_stop_signals_to_the_trainer
        import torch

        return DataLoader(dataset, batch_size=None, num_workers=num_workers, generator=torch.Generator().manual_seed(0),
                          **extra)

    def forget_dropped(self, state_mix: dict[str, Any]) -> None:
        """Drop the position of sources the config no longer names (logged once)."""
        known = set(self.names)
        dropped = {n for s in state_mix.get("streams", {}).values() for n in s.get("positions", {})} - known
        if not dropped:
            return
        log.warning("data.train no longer names the source(s) %s: their data position is dropped", sorted(dropped))
        for s in state_mix.get("streams", {}).values():
            for part in ("positions", "credits"):
                s[part] = {n: v for n, v in s.get(part, {}).items() if n in known}
        state_mix["history"] = {n: h for n, h in state_mix.get("history", {}).items() if n in known}

    def record(self, state_mix: dict[str, Any], batch: dict[str, Any]) -> str:
        """Note a consumed micro-batch in the stream's position; returns its source's name."""
        stream, chosen = int(batch["stream"]), int(batch[SOURCE])
        position = stream_mix(state_mix, stream)
        name = self.names[chosen]
        position.positions[name] = StreamPosition(int(batch["epoch"]), int(batch["items"]))
        position.credits = dict(zip(self.names, (float(c) for c in batch[CREDITS])))
        set_stream_mix(state_mix, stream, position)
        return name
