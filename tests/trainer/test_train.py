"""Real multi-process DeepSpeed ZeRO-3 runs on CPU (gloo): resume after SIGKILL, SIGTERM and SIGINT (exit 75),
a run of non-finite losses, a save killed half way."""

from __future__ import annotations

import json
import os
import signal

import pytest
from jobs import finish, kill_tree, launch, metrics
from jobs import tail as _tail
from jobs import wait_for

from videobert.trainer.audit import read_audit
from videobert.trainer.checkpoint import consolidated_model, recover_interrupted_saves
from videobert.trainer.run_folder import COMPLETE, CheckpointFolder, RunFolder, latest_complete, staged_dirs, step_dirs

pytestmark = pytest.mark.slow


def test_sigkill_and_resume_continue_like_an_uninterrupted_run(run_inputs, tmp_path):
    steps = ["max_steps=14", "data.num_workers=2"]
    straight = tmp_path / "straight"
    assert finish(launch(straight, run_inputs, *steps), straight) == 0, _tail(straight)

    broken = tmp_path / "broken"
    job = launch(broken, run_inputs, *steps)
    wait_for(lambda: (broken / "checkpoints/step-4" / COMPLETE).exists() and max(metrics(broken), default=0) >= 6,
             job, broken)
    kill_tree(job.pid)  # torchrun's workers run in sessions of their own: the agent alone would leave them training
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


def test_a_save_at_the_same_step_killed_half_way_loses_nothing(run_inputs, tmp_path):
    """A run of non-finite losses right after a periodic save saves that step again, mid-step: killed
    during that save, the complete checkpoint survives; let through, it replaces it with the state of
    the step's start (never a data position ahead of the optimizer)."""
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    blow_up = ["max_steps=50", "optim.lr=1e12", "optim.warmup_steps=0", "optim.grad_clip=0", "max_bad_steps=3",
               "optim.grad_accum_steps=2", "checkpoint.every_steps=1", "checkpoint.keep_last=1", "data.audit=true"]
    job = launch(run, run_inputs, *blow_up, nproc=0)
    # step-1 complete first, then its staged twin: the second save of step 1 is under way.
    wait_for(lambda: (ckpts / "step-1" / COMPLETE).exists() and (ckpts / ".step-1.partial").is_dir(), job, run)
    kill_tree(job.pid)
    job.wait()
    assert CheckpointFolder(ckpts / "step-1").is_complete() and (ckpts / "latest").read_text() == "step-1"

    code = finish(launch(run, run_inputs, *blow_up, nproc=0), run)
    assert code == 3 and "non-finite losses in a row at step 1" in _tail(run), _tail(run)
    assert f"resumed from {ckpts / 'step-1'}" in _tail(run)
    assert [s for s, _ in step_dirs(ckpts)] == [1] and staged_dirs(ckpts) == []
    state = CheckpointFolder(ckpts / "step-1").read_trainer_state(0)
    assert (state["step"], state["batches_consumed"], state["skipped_steps"]) == (1, 2, 0), "the state at step 1's end"
    stopped = CheckpointFolder(ckpts / "step-1").marker()["stopped"]
    assert stopped.startswith("3 non-finite losses in a row at step 1"), "its marker says why it was saved"
    audit = read_audit(RunFolder(run).audit(0))
    assert [line["step"] for line in audit if not line.get("skipped")] == [1]
    assert [line["step"] for line in audit if line.get("skipped")] == [2, 2, 2], "dropped micro-batches are listed"


def test_sigint_saves_a_checkpoint_exits_75_and_resume_continues(run_inputs, tmp_path):
    run = tmp_path / "run"
    job = launch(run, run_inputs, "max_steps=400", nproc=0)
    wait_for(lambda: max(metrics(run), default=0) >= 2, job, run)
    os.killpg(job.pid, signal.SIGINT)
    assert job.wait(timeout=120) == 75, _tail(run)
    stopped = latest_complete(run / "checkpoints")
    step = int(stopped.name.split("-")[1])
    assert "stopped by signal" in _tail(run) and 2 <= step < 400
    assert finish(launch(run, run_inputs, f"max_steps={step + 2}", nproc=0), run) == 0, _tail(run)
    assert f"resumed from {stopped}" in _tail(run)
    assert latest_complete(run / "checkpoints").name == f"step-{step + 2}"


def _folder(root, name: str, marker: str | None) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "engine.pt").write_text(name)
    if marker is not None:
        (root / name / COMPLETE).write_text(json.dumps({"step": 4, "which": marker}))


@pytest.mark.parametrize("left,expected", [
    ({"step-4": "old", ".step-4.partial": "new"}, "new"),              # complete, not yet renamed
    ({".step-4.replaced": "old", ".step-4.partial": "new"}, "new"),   # killed between the renames
    ({".step-4.replaced": "old"}, "old"),                             # the replacement vanished
    ({"step-4": "old", ".step-4.partial": None}, "old"),              # killed while writing
    ({"step-4": "new", ".step-4.replaced": "old"}, "new"),            # killed before the old one was deleted
])
def test_an_interrupted_save_is_finished_or_undone_never_lost(tmp_path, left, expected):
    for name, marker in left.items():
        _folder(tmp_path, name, marker)
    recover_interrupted_saves(tmp_path)
    assert staged_dirs(tmp_path) == [] and [s for s, _ in step_dirs(tmp_path)] == [4]
    assert json.loads((tmp_path / "step-4" / COMPLETE).read_text())["which"] == expected


def test_clip_shards_train_exactly_like_their_token_shards(tmp_path):
    """Clips tokenized inside the step give the same run as tokens made by `shards tokenize`."""
    from shard_factory import fit_codebook_on, write_clip_shards

    from videobert.shards.tokenize_clips import TokenizeConfig, tokenize

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
