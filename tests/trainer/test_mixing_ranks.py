"""Two corpora mixed 0.75 / 0.25 for real: DeepSpeed ZeRO-3 on 2 ranks, resumed on 1, then on 3; the
audit names each sample's source, its counts follow the weights, and every source's epochs are
exactly once through both changes; the loss of each source is logged."""

from __future__ import annotations

import collections
import shutil
from pathlib import Path

import pytest
from jobs import finish, launch, metrics, tail
from shard_factory import write_codebook, write_token_shards

from videobert.trainer.audit import read_audit
from videobert.trainer.run_folder import CheckpointFolder, RunFolder

pytestmark = pytest.mark.slow

MICRO, GLOBAL_BATCH = 4, 24
WEIGHTS = {"big": 0.75, "small": 0.25}
LAYOUTS = [(2, 4), (1, 8), (3, 16)]
"""(ranks, trained up to step): 2 ranks, then 1, then 3; checkpoints every 4 steps."""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A large source (96 samples, 8 shards) and a small one (16 samples, 4 shards): at 0.75 / 0.25 of
    24 examples a step, the small one goes round about twice as often."""
    root = tmp_path_factory.mktemp("mix-inputs")
    codebook = write_codebook(root / "codebook.safetensors")
    keys = {
        "big": write_token_shards(root / "big", videos=24, segments=4, shards=8, codebook_hash=codebook.hash,
                                  num_tokens=codebook.num_leaves),
        "small": write_token_shards(root / "small", videos=4, segments=4, shards=4, codebook_hash=codebook.hash,
                                    num_tokens=codebook.num_leaves, seed=1),
    }
    return root, keys


@pytest.fixture(scope="module")
def mixed_run(inputs, tmp_path_factory):
    root, _ = inputs
    run = tmp_path_factory.mktemp("mixed") / "run"
    train = ", ".join(f"{{path: {root / name}, weight: {weight}, name: {name}}}" for name, weight in WEIGHTS.items())
    for ranks, steps in LAYOUTS:
        job = launch(run, root, f"data.train=[{train}]", f"optim.global_batch_size={GLOBAL_BATCH}",
                     f"optim.micro_batch_size={MICRO}", "objectives.concat_prob=0", "data.audit=true",
                     "data.num_workers=0", f"max_steps={steps}", nproc=ranks)
        assert finish(job, run, 900) == 0, tail(run)
    return run


def _audit(run: Path) -> list[dict]:
    return [line for path in sorted(RunFolder(run).audit_dir.glob("rank-*.jsonl")) for line in read_audit(path)]


def test_the_audit_follows_the_weights(mixed_run):
    lines = _audit(mixed_run)
    assert sorted({line["step"] for line in lines}) == list(range(1, 17))
    counts = collections.Counter()
    for line in lines:
        counts[line["source"]] += len(line["keys"])
    total = sum(counts.values())
    assert total == 16 * GLOBAL_BATCH
    # Each stream holds the weights to within one micro-batch; 2 + 1 + 3 streams ran.
    tolerance = MICRO * sum(ranks for ranks, _ in LAYOUTS)
    for name, weight in WEIGHTS.items():
        assert abs(counts[name] - weight * total) <= tolerance, (counts, tolerance)


def test_every_source_is_read_exactly_once_per_epoch_through_2_1_3_ranks(mixed_run, inputs):
    _, keys = inputs
    assert "on 1 rank(s) x 1 stream(s); it was written by 2 x 1" in tail(mixed_run)
    assert "on 3 rank(s) x 1 stream(s); it was written by 1 x 1" in tail(mixed_run)
    seen = collections.defaultdict(list)
    for line in _audit(mixed_run):
        seen[(line["source"], line["epoch"])] += line["keys"]
    final = CheckpointFolder(mixed_run / "checkpoints" / "step-16")
    streams = [final.read_trainer_state(r)["mix"]["streams"]["0"]["positions"] for r in range(3)]
    finished = {name: min(s[name][0] for s in streams) for name in WEIGHTS}
    assert finished["small"] >= 3 and finished["big"] >= 1, finished
    for (name, epoch), got in seen.items():
        assert len(got) == len(set(got)), f"{name}, epoch {epoch}: a sample consumed twice"
        if epoch < finished[name]:
            assert sorted(got) == sorted(keys[name]), f"{name}, epoch {epoch}: samples missing"


def test_the_loss_of_each_source_is_logged(mixed_run):
    logged = metrics(mixed_run)
    assert sorted(logged) == list(range(1, 17))
    audited = collections.Counter()
    for line in _audit(mixed_run):
        audited[line["source"]] += len(line["keys"])
    for name in WEIGHTS:
        assert sum(logged[step][f"samples/{name}"] for step in logged) == audited[name]
        losses = [logged[step][f"loss/{name}"] for step in logged if f"loss/{name}" in logged[step]]
        assert len(losses) >= 8 and all(loss > 0 for loss in losses)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(RunFolder(mixed_run).tensorboard))
    board.Reload()
    assert {"train/loss/big", "train/loss/small"} <= set(board.Tags()["scalars"])
