"""The data stream: split across ranks and workers, exactly once per epoch, resumable exactly."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from videobert.shards import reader, schema
from videobert.trainer.data import (
    SAMPLE_EPOCHS, SAMPLE_KEYS, BatchStream, ReadErrors, StreamPosition, StreamSpec, epoch_items, epoch_shards,
    make_loader, repartition, stream_items,
)


def _keys_of(batch_or_items):
    return [s.key for item in batch_or_items for s in item]


def _all_streams(urls, world, workers, **kw):
    for rank in range(world):
        for stream in range(workers):
            yield StreamSpec(urls=tuple(urls), seed=7, rank=rank, world_size=world, stream=stream,
                             num_streams=workers, **kw)


@pytest.mark.parametrize("shards,world,workers", [(8, 2, 2), (5, 2, 2), (3, 2, 2), (4, 1, 1)])
@pytest.mark.parametrize("concat", [False, True])
def test_every_sample_exactly_once_per_epoch(token_shards, shards, world, workers, concat):
    folder, keys = token_shards(videos=12, segments=4, shards=shards)
    urls = reader.resolve_shards(folder)
    extra = dict(concat_prob=0.5, concat_max=3) if concat else {}
    for epoch in (0, 1):
        seen = []
        for spec in _all_streams(urls, world, workers, shuffle_buffer=16, **extra):
            seen += _keys_of(epoch_items(spec, epoch, ReadErrors()))
        assert sorted(seen) == sorted(keys)


def test_concatenation_joins_neighbours_of_one_video(token_shards):
    folder, _ = token_shards(videos=6, segments=5, shards=2)
    spec = StreamSpec(urls=tuple(reader.resolve_shards(folder)), seed=1, concat_prob=1.0, concat_max=3, shuffle=False)
    items = list(epoch_items(spec, 0, ReadErrors()))
    assert any(len(item) > 1 for item in items)
    for item in items:
        assert len(item) <= 3
        assert len({s.meta.video_id for s in item}) == 1
        indices = [s.meta.segment_index for s in item]
        assert indices == list(range(indices[0], indices[0] + len(item)))


def test_shard_order_and_shuffle_change_with_epoch_and_seed(token_shards):
    folder, _ = token_shards(videos=16, segments=3, shards=8)
    spec = StreamSpec(urls=tuple(reader.resolve_shards(folder)), seed=3, shuffle_buffer=8)
    order = lambda sp, e: _keys_of(epoch_items(sp, e, ReadErrors()))
    assert order(spec, 0) == order(spec, 0)
    assert order(spec, 0) != order(spec, 1)
    assert order(spec, 0) != order(dataclasses.replace(spec, seed=4), 0)
    assert epoch_shards(spec, 0)[0] != epoch_shards(spec, 1)[0]


def _build_keys(group, rng):
    # A builder that records what it was given and one draw of its generator.
    return {"keys": np.array([s.key for s in group]), "draw": np.array(rng.random())}


def _take(stream, n):
    return list(itertools.islice(iter(stream), n))


def test_batch_stream_resumes_at_a_saved_position(token_shards):
    folder, _ = token_shards(videos=10, segments=3, shards=3)
    spec = StreamSpec(urls=tuple(reader.resolve_shards(folder)), seed=5, shuffle_buffer=8, concat_prob=0.3, concat_max=2)
    whole = _take(BatchStream(spec, StreamPosition(), _build_keys, batch_size=4), 12)
    # Batches 0-4 consumed, then the job dies; a new stream starts at the saved position.
    saved = whole[4]
    resumed = _take(BatchStream(spec, StreamPosition(int(saved["epoch"]), int(saved["items"])), _build_keys, 4), 7)
    for a, b in zip(whole[5:], resumed):
        assert list(a["keys"]) == list(b["keys"])
        assert a["draw"] == b["draw"]
    assert {int(b["epoch"]) for b in whole} == {0, 1}, "12 batches of 4 should cross an epoch boundary"


def test_loader_with_workers_resumes_in_the_same_turn_order(token_shards):
    folder, _ = token_shards(videos=12, segments=3, shards=4)
    spec = StreamSpec(urls=tuple(reader.resolve_shards(folder)), seed=2, num_streams=2, shuffle_buffer=8)

    def loader(positions, consumed):
        return make_loader(spec, positions, consumed, _build_keys, batch_size=3, num_workers=2, prefetch_factor=2)

    whole = [list(b["keys"]) for b in itertools.islice(loader({}, 0), 10)]
    positions, consumed = {}, 0
    for batch in itertools.islice(loader({}, 0), 5):
        positions[int(batch["stream"])] = StreamPosition(int(batch["epoch"]), int(batch["items"]))
        consumed += 1
    resumed = [list(b["keys"]) for b in itertools.islice(loader(positions, consumed), 5)]
    assert resumed == whole[5:]


def test_unreadable_samples_are_skipped_and_counted(token_shards, tmp_path):
    folder, keys = token_shards(videos=6, segments=3, shards=2)
    urls = reader.resolve_shards(folder)
    data = Path(urls[1]).read_bytes()
    Path(urls[1]).write_bytes(data[: len(data) // 2 + 100])  # cut mid-member
    spec = StreamSpec(urls=tuple(urls), seed=0, shuffle=False)
    errors = ReadErrors()
    got = _keys_of(epoch_items(spec, 0, errors))
    assert errors.count >= 1 and any(urls[1] in m for m in errors.recent)
    assert set(got) < set(keys) and len(got) >= 9  # the whole first shard and part of the second


def test_a_stream_without_any_readable_sample_stops_with_a_message(tmp_path):
    empty = tmp_path / schema.shard_name(0)
    empty.write_bytes(b"not a tar file at all")
    spec = StreamSpec(urls=(str(empty),), seed=0)
    with pytest.raises(RuntimeError, match="no readable samples"):
        _take(BatchStream(spec, StreamPosition(), _build_keys, 2), 1)


def test_missing_shards_fail_at_start_up(tmp_path):
    with pytest.raises(reader.ShardSpecError, match="no shards found"):
        reader.resolve_shards(str(tmp_path / "nowhere" / "shard-{000000..000003}.tar"))


def test_samples_that_break_the_schema_do_not_stop_a_loader_worker(token_shards, tmp_path):
    """Metadata of the wrong types, an array of another dtype, a forged .npy header, a key with a '/':
    a DataLoader worker skips and counts each, and delivers every good sample of the epoch."""
    import webdataset as wds

    folder, keys = token_shards(videos=4, segments=2, shards=2)
    urls = reader.resolve_shards(folder)
    first = next(reader.iter_samples(urls))
    good = schema.encode_sample(first)
    meta = json.loads(first.meta.to_json())
    huge = b"{'descr': '<i4', 'fortran_order': False, 'shape': (10000000000,), }"
    huge = b"\x93NUMPY\x01\x00" + (len(huge) + 1).to_bytes(2, "little") + huge + b"\n"
    bad = [
        {**good, "__key__": "nulls-s00000", schema.META: json.dumps({**meta, "frame_size": None}).encode()},
        {**good, "__key__": "strings-s00000", schema.META: json.dumps({**meta, "n_clips": "3"}).encode()},
        {**good, "__key__": "wide-s00000", schema.TOKENS: schema.encode_array(first.tokens.astype(np.int64))},
        {**good, "__key__": "forged-s00000", schema.TOKENS: huge},
        {**good, "__key__": "dir/evil-s00000"},
    ]
    hostile = tmp_path / "hostile.tar"
    with wds.TarWriter(str(hostile), encoder=False) as sink:
        for sample in bad:
            sink.write(sample)
    spec = StreamSpec(urls=(str(hostile), *urls), seed=0, shuffle=False)
    loader = make_loader(spec, {}, 0, _build_keys, batch_size=2, num_workers=1, prefetch_factor=2)
    seen, bad_count = [], 0
    for batch in loader:
        if int(batch["epoch"]) > 0:
            break
        seen += list(batch["keys"])
        bad_count += int(batch["bad_samples"])
    assert sorted(seen) == sorted(keys) and bad_count == len(bad)


# -- another layout: the epoch in progress finishes exactly once -------------------------------------


def _audit_build(group, rng):
    return {"n": np.array(len(group))}


def _layout_streams(urls, world, streams, positions, history, **kw):
    for g in range(world * streams):
        spec = StreamSpec(urls=tuple(urls), seed=11, rank=g // streams, world_size=world, stream=g % streams,
                          num_streams=streams, history=history, **kw)
        yield g, iter(BatchStream(spec, positions.get(g, StreamPosition()), _audit_build, batch_size=3))


def _consume(urls, world, streams, positions, history, seen, *, batches=None, until_epoch=None, **kw):
    """Each stream of a layout takes ``batches`` batches (or reads until it is in ``until_epoch``);
    the keys it consumed are added to ``seen[epoch]``. Returns the layout's positions."""
    after = {}
    for g, stream in _layout_streams(urls, world, streams, positions, history, **kw):
        position, taken = positions.get(g, StreamPosition()), 0
        while (batches is not None and taken < batches) or (until_epoch is not None and position.epoch < until_epoch):
            batch = next(stream)
            for key, epoch in zip(batch[SAMPLE_KEYS], batch[SAMPLE_EPOCHS]):
                seen.setdefault(int(epoch), []).append(str(key))
            position, taken = StreamPosition(int(batch["epoch"]), int(batch["items"])), taken + 1
        after[g] = position
    return after


def _change(positions, world, streams, history):
    first, history = repartition({g: positions.get(g, StreamPosition()) for g in range(world * streams)},
                                 world, streams, history)
    return first, history


@pytest.mark.parametrize("layouts,shards", [
    ([(2, 2), (1, 1)], 8),          # ranks and workers shrink
    ([(1, 1), (2, 1)], 8),          # ranks grow
    ([(2, 1), (2, 2)], 8),          # workers alone
    ([(2, 1), (1, 1), (3, 1)], 6),  # two changes within one epoch
    ([(2, 2), (3, 2)], 3),          # fewer shards than streams: every stream reads every shard
])
def test_another_layout_finishes_the_epoch_exactly_once(token_shards, layouts, shards):
    folder, keys = token_shards(videos=24, segments=4, shards=shards)
    urls = reader.resolve_shards(folder)
    kw = dict(shuffle_buffer=8, concat_prob=0.5, concat_max=3)
    seen, positions, history = {}, {}, ()
    for (world, streams), nxt in zip(layouts, layouts[1:]):
        positions = _consume(urls, world, streams, positions, history, seen, batches=2, **kw)
        assert all(p.epoch == 0 for p in positions.values()), "the change must fall within epoch 0"
        first, history = _change(positions, world, streams, history)
        positions = {g: StreamPosition(first, 0) for g in range(nxt[0] * nxt[1])}
    world, streams = layouts[-1]
    _consume(urls, world, streams, positions, history, seen, until_epoch=2, **kw)
    for epoch in (0, 1):
        assert sorted(seen[epoch]) == sorted(keys), f"epoch {epoch}: each sample exactly once"


def test_a_change_while_streams_are_in_different_epochs(token_shards):
    """Streams of unequal length drift apart by whole epochs; each epoch they straddle is kept exact."""
    folder, keys = token_shards(videos=10, segments=3, shards=5)
    urls = reader.resolve_shards(folder)
    seen = {}
    positions = _consume(urls, 1, 2, {}, (), seen, batches=9, shuffle_buffer=4)
    assert len({p.epoch for p in positions.values()}) > 1, "the streams should be in different epochs"
    first, history = _change(positions, 1, 2, ())
    _consume(urls, 3, 1, {g: StreamPosition(first, 0) for g in range(3)}, history, seen,
             until_epoch=max(p.epoch for p in positions.values()) + 2, shuffle_buffer=4)
    for epoch in range(max(p.epoch for p in positions.values()) + 1):
        assert sorted(seen[epoch]) == sorted(keys), f"epoch {epoch}"


def test_an_unchanged_layout_resumes_as_before(token_shards):
    folder, _ = token_shards(videos=10, segments=3, shards=4)
    spec = StreamSpec(urls=tuple(reader.resolve_shards(folder)), seed=5, shuffle_buffer=8)
    whole = _take(BatchStream(spec, StreamPosition(), _build_keys, 4), 8)
    assert stream_items(spec, 0, ReadErrors()) is not None and spec.phases(0) == ()
    keys = [list(b["keys"]) for b in whole]
    assert keys == [list(b["keys"]) for b in _take(BatchStream(spec, StreamPosition(), _build_keys, 4), 8)]
