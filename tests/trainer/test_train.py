"""Real multi-process DeepSpeed ZeRO-3 runs on CPU (gloo): resume after SIGKILL, SIGTERM, bad losses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.checkpoint import consolidated_model
from trainer.run_folder import COMPLETE, CheckpointFolder, RunFolder, latest_complete, step_dirs

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _command(run_dir: Path, inputs: Path, nproc: int, overrides: list[str]) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    if nproc == 0:
        launcher = [sys.executable]
    return [
        *launcher, "-m", "trainer.train", "--config", str(ROOT / "launch/recipes/debug.yaml"),
        f"run_dir={run_dir}", f"data.train={inputs / 'train'}", f"data.codebook={inputs / 'codebook.safetensors'}",
        f"deepspeed_config={ROOT / 'ds_config.json'}", "model.init=", "model.preset=tiny", "data.text_model=minilm",
        "logging.every_steps=1", "logging.progress=false", "checkpoint.every_steps=4", "checkpoint.keep_last=2",
        *overrides,
    ]


def launch(run_dir: Path, inputs: Path, *overrides: str, nproc: int = 2) -> subprocess.Popen:
    """Start a training job in its own process group (so that a test can signal all of it)."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / "job.log", "ab")
    return subprocess.Popen(_command(run_dir, inputs, nproc, list(overrides)), env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def finish(job: subprocess.Popen, run_dir: Path, timeout: float = 240) -> int:
    try:
        return job.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        pytest.fail(f"training did not finish in {timeout} s:\n{_tail(run_dir)}")


def _tail(run_dir: Path) -> str:
    return (run_dir / "job.log").read_text(errors="replace")[-4000:]


def metrics(run_dir: Path) -> dict[int, dict]:
    """The last logged values of each step (a resumed run logs some steps twice)."""
    path = RunFolder(run_dir).metrics
    if not path.exists():
        return {}
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {m["step"]: m for m in lines if m["split"] == "train"}


def wait_for(predicate, job: subprocess.Popen, run_dir: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if job.poll() is not None:
            pytest.fail(f"job ended (code {job.returncode}) before the awaited point:\n{_tail(run_dir)}")
        if time.monotonic() > deadline:
            os.killpg(job.pid, signal.SIGKILL)
            pytest.fail(f"timed out waiting:\n{_tail(run_dir)}")
        time.sleep(0.01)


def test_sigkill_and_resume_continue_like_an_uninterrupted_run(run_inputs, tmp_path):
    steps = ["max_steps=14", "data.num_workers=2"]
    straight = tmp_path / "straight"
    assert finish(launch(straight, run_inputs, *steps), straight) == 0, _tail(straight)

    broken = tmp_path / "broken"
    job = launch(broken, run_inputs, *steps)
    wait_for(lambda: (broken / "checkpoints/step-4" / COMPLETE).exists() and max(metrics(broken), default=0) >= 6,
             job, broken)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert max(metrics(broken)) < 14, "the job must be killed mid-run for this test to mean anything"
    resumed_from = latest_complete(broken / "checkpoints")
    assert finish(launch(broken, run_inputs, *steps), broken) == 0, _tail(broken)

    first_after = int(resumed_from.name.split("-")[1]) + 1
    a, b = metrics(straight), metrics(broken)
    for step in range(first_after, 15):
        for key in ("loss", "text_mlm_loss", "alignment_loss", "grad_norm", "tokens", "samples"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-6, abs=1e-9), (step, key)
    states = [CheckpointFolder(latest_complete(RunFolder(d).checkpoints)).read_trainer_state(1) for d in (straight, broken)]
    assert states[0] == states[1], "counters and data positions of the final checkpoints agree"
    assert [s for s, _ in step_dirs(broken / "checkpoints")] == [12, 14], "keep_last=2 prunes older checkpoints"

    # The consolidated weights of both runs are the same model.
    wa, wb = (consolidated_model(latest_complete(d / "checkpoints")).state_dict() for d in (straight, broken))
    for name in wa:
        assert (wa[name] - wb[name]).abs().max() <= 1e-6, name


def test_sigterm_saves_a_checkpoint_and_resume_finishes(run_inputs, tmp_path):
    run = tmp_path / "run"
    job = launch(run, run_inputs, "max_steps=400")
    wait_for(lambda: max(metrics(run), default=0) >= 3, job, run)
    os.killpg(job.pid, signal.SIGTERM)
    job.wait(timeout=120)
    stopped = latest_complete(run / "checkpoints")
    assert stopped is not None and "stopped by signal" in _tail(run)
    step = int(stopped.name.split("-")[1])
    assert 3 <= step < 400
    assert finish(launch(run, run_inputs, f"max_steps={step + 3}"), run) == 0, _tail(run)
    assert latest_complete(run / "checkpoints").name == f"step-{step + 3}"
    assert f"resumed from {stopped}" in _tail(run)


def test_incomplete_checkpoints_are_ignored_on_resume(run_inputs, tmp_path):
    run = tmp_path / "run"
    assert finish(launch(run, run_inputs, "max_steps=4", nproc=0), run) == 0, _tail(run)
    fake = run / "checkpoints" / "step-9"
    (fake / "trainer").mkdir(parents=True)
    (fake / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"half written")
    assert finish(launch(run, run_inputs, "max_steps=6", nproc=0), run) == 0, _tail(run)
    assert "resumed from" in _tail(run) and f"{run / 'checkpoints' / 'step-4'}" in _tail(run)
    assert latest_complete(run / "checkpoints").name == "step-6"
    assert (run / "checkpoints" / "latest").read_text() == "step-6"


def test_a_run_of_non_finite_losses_stops_with_a_checkpoint(run_inputs, tmp_path):
    run = tmp_path / "run"
    code = finish(launch(run, run_inputs, "max_steps=50", "optim.lr=1e12", "optim.warmup_steps=0",
                         "optim.grad_clip=0", "max_bad_steps=3", nproc=0), run)
    log = _tail(run)
    assert code != 0 and "non-finite losses in a row" in log
    assert latest_complete(run / "checkpoints") is not None
    state = CheckpointFolder(latest_complete(RunFolder(run).checkpoints)).read_trainer_state(0)
    assert state["skipped_steps"] >= 3


def test_clip_shards_train_exactly_like_their_token_shards(tmp_path):
    """Clips tokenized inside the step give the same run as tokens made by `shards tokenize`."""
    from shards.tokenize import TokenizeConfig, tokenize
    from shard_factory import fit_codebook_on, write_clip_shards

    inputs = tmp_path / "inputs"
    write_clip_shards(inputs / "clips", videos=12, segments=3, shards=3)
    fit_codebook_on(inputs / "clips", inputs / "codebook.safetensors")
    tokenize(TokenizeConfig(clips=(str(inputs / "clips"),), codebook=str(inputs / "codebook.safetensors"),
                            out=str(inputs / "train"), workers=1, progress=False))
    common = ["max_steps=4", "data.num_workers=0", "optim.micro_batch_size=6", "objectives.video_mask_prob=0.5"]
    from_tokens, from_clips = tmp_path / "tokens", tmp_path / "clips"
    assert finish(launch(from_tokens, inputs, *common, nproc=0), from_tokens) == 0, _tail(from_tokens)
    assert finish(launch(from_clips, inputs, *common, f"data.train={inputs / 'clips'}", nproc=0), from_clips) == 0, _tail(from_clips)
    a, b = metrics(from_tokens), metrics(from_clips)
    assert set(a) == set(b) == {1, 2, 3, 4}
    for step in a:
        for key in ("loss", "tokens", "samples"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-6), (step, key)
    assert any("video_mlm_acc" in m for m in a.values()), "some video tokens were masked and predicted"
