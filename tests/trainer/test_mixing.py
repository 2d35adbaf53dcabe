"""Weighted mixing of sources: the round robin's shares, each source's epochs exactly once, exact
resume, re-partition per source through 2 -> 1 -> 3 ranks, and new weights on resume."""

from __future__ import annotations

import collections
import itertools

import numpy as np
import pytest

from videobert.shards import reader
from videobert.trainer.config import ConfigError, load_config, source_name
from videobert.trainer.data import SAMPLE_EPOCHS, SAMPLE_KEYS, StreamSpec
from videobert.trainer.mixing import Mix, MixedSource, choose, merged_mix, set_stream_mix, stream_mix

WEIGHTS = (0.75, 0.25)


def _build(group, rng):
    return {"n": np.array(len(group))}


@pytest.fixture
def two_sources(token_shards):
    """A large source (96 samples in 6 shards) and a small one (16 samples in 4 shards)."""
    big, big_keys = token_shards(videos=24, segments=4, shards=6)
    small, small_keys = token_shards(videos=4, segments=4, shards=4)
    mix = Mix((MixedSource("big", WEIGHTS[0], tuple(reader.resolve_shards(big))),
               MixedSource("small", WEIGHTS[1], tuple(reader.resolve_shards(small)))))
    return mix, {"big": big_keys, "small": small_keys}


def test_round_robin_gives_each_source_its_share_within_one():
    for weights in [(0.75, 0.25), (1.0, 2.0, 3.0), (0.1, 0.9), (5.0,)]:
        credits, counts = [0.0] * len(weights), collections.Counter()
        for n in range(1, 301):
            counts[choose(credits, weights)] += 1
            for i, w in enumerate(weights):
                assert abs(counts[i] - n * w / sum(weights)) <= 1.0, (weights, n)


def _spec(rank=0, world=1, stream=0, streams=1):
    return StreamSpec(urls=(), seed=3, rank=rank, world_size=world, stream=stream, num_streams=streams,
                      shuffle_buffer=8, concat_prob=0.5, concat_max=3)


def _run_layout(mix, state, world, streams, batches, seen, *, weights=None):
    """Every stream of a layout (ranks x workers, each rank's state its own) takes ``batches``
    micro-batches; the keys go to ``seen[(source, epoch)]``. Returns the ranks' states."""
    if weights is not None:
        mix = Mix(tuple(MixedSource(s.name, w, s.urls) for s, w in zip(mix.sources, weights)))
    after = []
    for rank in range(world):
        rank_state = state[rank]
        for stream in range(streams):
            it = iter(_stream(mix, rank_state, rank, world, stream, streams))
            for batch in itertools.islice(it, batches):
                name = mix.record(rank_state, batch)
                seen[("batches", name)].append(rank)
                for key, epoch in zip(batch[SAMPLE_KEYS], batch[SAMPLE_EPOCHS]):
                    seen[(name, int(epoch))].append(str(key))
        after.append(rank_state)
    return after


def _stream(mix, rank_state, rank, world, stream, streams):
    from videobert.trainer.mixing import MixedBatchStream

    spec = _spec(rank, world, stream, streams)
    return MixedBatchStream(mix.specs(spec, rank_state), mix.weights, stream_mix(rank_state, stream), mix.names,
                            _build, 4)


def test_each_source_keeps_its_epochs_exactly_once_and_the_weights_hold(two_sources):
    mix, keys = two_sources
    seen = collections.defaultdict(list)
    [state] = _run_layout(mix, [{}], 1, 1, 40, seen)
    assert (len(seen.pop(("batches", "big"))), len(seen.pop(("batches", "small")))) == (30, 10)
    epochs = {name: stream_mix(state, 0).positions[name].epoch for name in mix.names}
    assert epochs["small"] > epochs["big"] >= 1, "the small source repeats; the large one is not forced to finish"
    for (name, epoch), got in seen.items():
        assert len(got) == len(set(got)), f"{name} epoch {epoch}: a sample twice"
        if epoch < epochs[name]:
            assert sorted(got) == sorted(keys[name]), f"{name} epoch {epoch}: samples missing"


def test_a_mixed_stream_resumes_exactly(two_sources):
    mix, _ = two_sources
    whole = list(itertools.islice(iter(_stream(mix, {}, 0, 1, 0, 1)), 20))
    state = {}
    for batch in whole[:9]:
        mix.record(state, batch)
    resumed = list(itertools.islice(iter(_stream(mix, state, 0, 1, 0, 1)), 11))
    for a, b in zip(whole[9:], resumed):
        assert list(a[SAMPLE_KEYS]) == list(b[SAMPLE_KEYS]) and int(a["source"]) == int(b["source"])


def test_two_one_three_ranks_keep_every_source_exactly_once(two_sources):
    mix, keys = two_sources
    seen = collections.defaultdict(list)
    states = _run_layout(mix, [{}, {}], 2, 1, 3, seen)
    states = [merged_mix(states, 2, 1, 1)]
    states = _run_layout(mix, states, 1, 1, 3, seen)
    states = [merged_mix(states, 1, 1, 1) for _ in range(3)]
    states = _run_layout(mix, states, 3, 1, 30, seen)
    batches = {name: len(seen.pop(("batches", name))) for name in mix.names}
    assert abs(batches["big"] - 3 * batches["small"]) <= 3 * 6, "within one micro-batch per stream and layout"
    finished = {name: min(stream_mix(s, 0).positions[name].epoch for s in states) for name in mix.names}
    assert finished["big"] >= 1 and finished["small"] >= 2
    for (name, epoch), got in seen.items():
        assert len(got) == len(set(got)), f"{name} epoch {epoch}: a sample twice"
        if epoch < finished[name]:
            assert sorted(got) == sorted(keys[name]), f"{name} epoch {epoch}: samples missing"


def test_new_weights_on_resume_keep_each_sources_position(two_sources):
    mix, keys = two_sources
    seen = collections.defaultdict(list)
    [state] = _run_layout(mix, [{}], 1, 1, 6, seen)
    before = dict(stream_mix(state, 0).positions)
    later = collections.defaultdict(list)
    [state] = _run_layout(mix, [state], 1, 1, 12, later, weights=(0.25, 0.75))
    assert len(later.pop(("batches", "small"))) == 9 and len(later.pop(("batches", "big"))) == 3
    first = {name: min(e for (n, e) in later if n == name) for name in mix.names}
    assert first == {name: before[name].epoch for name in mix.names}
    small = sum(len(v) for (n, _), v in later.items() if n == "small")
    assert small > sum(len(v) for (n, _), v in later.items() if n == "big"), "the new weights rule"
    for name in mix.names:
        epoch = before[name].epoch
        both = seen[(name, epoch)] + later[(name, epoch)]
        assert len(both) == len(set(both)), f"{name}: the resumed epoch repeats nothing"


def test_the_loader_with_workers_resumes_in_the_same_turn_order(two_sources):
    mix, _ = two_sources
    spec = _spec(streams=2)

    def loader(state, consumed):
        return mix.loader(spec, state, consumed, _build_keys, 3, 2, 2)

    whole = [(int(b["source"]), list(b[SAMPLE_KEYS])) for b in itertools.islice(loader({}, 0), 12)]
    state, consumed = {}, 0
    for batch in itertools.islice(loader({}, 0), 7):
        mix.record(state, batch)
        consumed += 1
    resumed = [(int(b["source"]), list(b[SAMPLE_KEYS])) for b in itertools.islice(loader(state, consumed), 5)]
    assert resumed == whole[7:]
    assert {source for source, _ in whole} == {0, 1}


def _build_keys(group, rng):
    return {"n": np.array(len(group)), "draw": np.array(rng.random())}


def test_sources_with_weights_are_read_from_a_recipe_and_checked(tmp_path):
    recipe = tmp_path / "mix.yaml"
    recipe.write_text("data:\n  codebook: cb\n  train:\n    - {path: a/shards, weight: 0.75}\n"
                      "    - {path: [b/one, b/two], weight: 0.25, name: bee}\n")
    cfg = load_config(recipe)
    assert [(source_name(s), s.weight, s.path) for s in cfg.data.train] == [
        ("shards", 0.75, ["a/shards"]), ("bee", 0.25, ["b/one", "b/two"])]
    assert load_config(recipe, settings={}).to_dict()["data"]["train"][1]["name"] == "bee"
    with pytest.raises(ConfigError) as e:
        load_config(recipe, settings={"data.train": ["x/shards", {"path": "y", "weight": -1}, {"path": "z/shards"}]})
    message = str(e.value)
    assert "mixes plain shard specs and sources" in message
    with pytest.raises(ConfigError) as e:
        load_config(recipe, settings={"data.train": [{"path": "y/shards", "weight": 0}, {"path": "z/shards"}]})
    assert "data.train[0].weight=0.0 must be positive" in str(e.value)
    assert "names ['shards'] are not unique" in str(e.value)


def test_named_heldout_sources_are_read_and_checked(tmp_path):
    from videobert.trainer.config import heldout_sources, shard_specs

    recipe = tmp_path / "held.yaml"
    recipe.write_text("data:\n  codebook: cb\n  train: [t/shards]\n  heldout:\n    - {path: a/held, name: cooking}\n"
                      "    - {path: [b/one, b/two], name: crafts}\n")
    cfg = load_config(recipe)
    assert heldout_sources(cfg.data) == [("cooking", ["a/held"]), ("crafts", ["b/one", "b/two"])]
    assert shard_specs(cfg.data.heldout) == ["a/held", "b/one", "b/two"]
    plain = load_config(recipe, settings={"data.heldout": ["a/held", "b/held"]})
    assert heldout_sources(plain.data) == [] and shard_specs(plain.data.heldout) == ["a/held", "b/held"]
    with pytest.raises(ConfigError) as e:
        load_config(recipe, settings={"data.heldout": [{"path": "a/held", "weight": 0.5}, {"path": "b/held"},
                                                       {"path": "c/x", "name": "a/b"}]})
    message = str(e.value)
    assert "data.heldout[0].weight=0.5: held-out sources are evaluated each on its own" in message
    assert "names ['held'] are not unique" in message
    assert "source names ['a/b'] cannot name TensorBoard tags" in message
    with pytest.raises(ConfigError, match="data.heldout mixes plain shard specs and named sources"):
        load_config(recipe, settings={"data.heldout": ["x/held", {"path": "y/held"}]})
