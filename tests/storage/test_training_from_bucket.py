"""Training that streams its shards from a bucket of a real S3-compatible server (SeaweedFS on the
loopback): the same losses as from local disk, through a server outage (retried), past the retry
bound (a stop naming the object, then an exact resume), at another number of ranks, and with the
credentials in no file the run writes."""

from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "trainer"))
from jobs import ROOT, audit_by_epoch, finish, kill_tree, metrics, start, tail, wait_for  # noqa: E402
from seaweed import BUCKET  # noqa: E402
from shard_factory import write_codebook, write_token_shards  # noqa: E402

from videobert.shards import storage  # noqa: E402
from videobert.trainer.run_folder import COMPLETE, latest_complete  # noqa: E402

pytestmark = pytest.mark.slow

STEPS = 20  # 16 steps make an epoch of the 128 training samples on one rank
READ_AS_NEEDED = ("data.shuffle_buffer=4", "data.prefetch_factor=1")
"""The loader reads a few batches ahead only, so that an outage mid-run meets reads still to come."""
LOSSES = ("loss", "text_mlm_loss", "alignment_loss", "grad_norm", "tokens", "samples")


@pytest.fixture(scope="module")
def inputs(s3_server, tmp_path_factory):
    """The same codebook and token shards on local disk and under a prefix of the bucket."""
    local = tmp_path_factory.mktemp("inputs")
    codebook = write_codebook(local / "codebook.safetensors")
    write_token_shards(local / "train", videos=32, segments=4, shards=16, codebook_hash=codebook.hash,
                       num_tokens=codebook.num_leaves)
    prefix = f"s3://{BUCKET}/training-inputs"
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.upload(path, storage.join(prefix, *path.relative_to(local).parts))
    keys = {line for line in _keys(local / "train")}
    return {"local": str(local), "bucket": prefix, "keys": keys}


def _keys(folder: Path) -> list[str]:
    from videobert.shards import reader

    return [s.key for s in reader.iter_samples(reader.resolve_shards(str(folder)), decode_arrays=False)]


def command(run_dir: Path, where: str, nproc: int, *extra: str, codebook: str = "codebook.safetensors") -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    settings = [
        f"run_dir={run_dir}", f"data.train={where}/train", f"data.codebook={where}/{codebook}",
        f"deepspeed_config={ROOT / 'ds_config.json'}", "model.init=", "model.preset=tiny", "data.text_model=minilm",
        "logging.every_steps=1", "logging.progress=false", "checkpoint.every_steps=4", "checkpoint.keep_last=2",
        f"max_steps={STEPS}", "data.num_workers=2", "data.audit=true", *READ_AS_NEEDED, *extra,
    ]
    return [*launcher, "-m", "videobert.trainer.train", "--config", "debug", *(f"--{s}" for s in settings)]


def launch(run_dir: Path, where: str, nproc: int = 1, retry_seconds: float = 120, *extra: str):
    return start(command(run_dir, where, nproc, *extra), run_dir / "job.log",
                 VIDEOBERT_STORAGE_RETRY_SECONDS=str(retry_seconds), VIDEOBERT_SCRATCH=str(run_dir.parent / "scratch"))


@pytest.fixture(scope="module")
def straight(inputs, tmp_path_factory):
    """The uninterrupted run from local disk."""
    run = tmp_path_factory.mktemp("straight") / "run"
    assert finish(launch(run, inputs["local"]), run) == 0, tail(run)
    return metrics(run)


def assert_same_losses(run: Path, straight: dict, first: int = 1) -> None:
    got = metrics(run)
    assert max(got) == STEPS
    for step in range(first, STEPS + 1):
        assert set(LOSSES) & set(got[step]) == set(LOSSES) & set(straight[step]), step
        for key in set(LOSSES) & set(straight[step]):
            assert got[step][key] == pytest.approx(straight[step][key], rel=1e-6, abs=1e-9), (step, key)


def assert_epoch_once(run: Path, keys: set[str]) -> None:
    seen = audit_by_epoch(run, STEPS)[0]
    assert set(seen) == keys and set(seen.values()) == {1}, "epoch 0 consumed every sample exactly once"


def test_an_outage_of_the_server_mid_epoch_is_retried_and_changes_nothing(s3_server, inputs, straight, tmp_path):
    run = tmp_path / "run"
    job = launch(run, inputs["bucket"])
    wait_for(lambda: max(metrics(run), default=0) >= 3, job, run)
    s3_server.kill()
    time.sleep(3)
    s3_server.start()
    assert finish(job, run) == 0, tail(run)
    assert "trying again" in tail(run, "job.log") or "trying again" in (run / "job.log").read_text(), \
        "the outage must have met a read for this test to mean anything"
    assert_same_losses(run, straight)
    assert_epoch_once(run, inputs["keys"])
    secrets = (s3_server.access_key, s3_server.secret_key)
    for path in [p for p in run.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        assert not any(s.encode() in data for s in secrets), f"{path} holds a credential"


def test_an_outage_past_the_bound_stops_naming_the_object_and_the_resume_is_exact(s3_server, inputs, straight,
                                                                                   tmp_path):
    run = tmp_path / "run"
    job = launch(run, inputs["bucket"], 1, 3)
    wait_for(lambda: (run / "checkpoints/step-4" / COMPLETE).exists() and max(metrics(run), default=0) >= 5, job, run)
    s3_server.kill()
    try:
        code = job.wait(timeout=120)
    except Exception:
        kill_tree(job.pid)
        raise
    finally:
        s3_server.start()
    log = (run / "job.log").read_text()
    assert code != 0 and max(metrics(run)) < STEPS
    assert f"s3://{BUCKET}/training-inputs/" in log and "still failing after" in log, log[-3000:]
    assert finish(launch(run, inputs["bucket"]), run) == 0, tail(run)
    resumed_from = int(latest_complete(run / "checkpoints").name.split("-")[1])
    assert resumed_from == STEPS
    assert_same_losses(run, straight, first=5)


def test_two_ranks_resume_on_one_from_the_bucket_exactly_once(inputs, tmp_path):
    import os
    import signal

    run = tmp_path / "run"
    job = launch(run, inputs["bucket"], 2)
    wait_for(lambda: max(metrics(run), default=0) >= 3, job, run)
    os.killpg(job.pid, signal.SIGTERM)
    job.wait(timeout=120)
    stopped = int(latest_complete(run / "checkpoints").name.split("-")[1])
    assert stopped < 8, "stopped inside the first epoch (8 steps on two ranks)"
    assert finish(launch(run, inputs["bucket"], 1), run) == 0, tail(run)
    seen = audit_by_epoch(run, 10_000)[0]
    assert set(seen) == inputs["keys"] and collections.Counter(seen.values()) == {1: len(inputs["keys"])}
