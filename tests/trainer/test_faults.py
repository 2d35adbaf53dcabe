"""The faults a cluster throws at a run, each on real processes (DeepSpeed ZeRO-3 on gloo, CPU), each
ending in a bounded time: a full disk during a save, a rank killed, a checkpoint's bytes flipped, two
runs started on one run folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from jobs import ROOT, finish, kill_tree, launch, metrics, start, tail, trainer_args, wait_for

from videobert.trainer import run_lock
from videobert.trainer.checkpoint import damage_in_share
from videobert.trainer.run_folder import CheckpointFolder, latest_complete
from videobert.trainer.run_lock import RunFolderLocked, RunLock

pytestmark = pytest.mark.slow

EXIT_BOUND_S = 60
"""The longest a failed process may take to end, counted from its failure (the trainer's own bound,
``train.EXIT_GRACE_S``, is 30 s; the rest is this shared machine's slack)."""


def _train(run_dir: Path, inputs: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "videobert.trainer.train", "--config", "debug",
            *(f"--{s}" for s in trainer_args(run_dir, inputs, list(overrides)))]


def _ended_within(job: subprocess.Popen, seconds: float, run_dir: Path, log: str = "job.log") -> int:
    try:
        return job.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        kill_tree(job.pid)
        pytest.fail(f"still running {seconds} s after its failure:\n{tail(run_dir, log)}")


# ---------------------------------------------------------------------------------------------
# a full disk


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unshare and a user namespace to mount a small tmpfs")
def test_a_full_disk_says_no_space_names_the_file_and_the_run_exits(run_inputs, tmp_path):
    """With the default data.num_workers=1, a save that fills the disk ends the process at once (it
    used to hang joining its loader worker) with a message that says so; the complete checkpoint
    before it is intact and the run resumes from it elsewhere."""
    mount, saved, out = tmp_path / "small", tmp_path / "saved", tmp_path / "out"
    mount.mkdir()
    run = mount / "run"
    # 40 MiB holds the run's first checkpoint (step 2, ~24 MiB) but not the second one beside it.
    script = ('mount -t tmpfs -o size=40m tmpfs "$1" && shift && "$@"; code=$?; cp -a "$RUN" "$SAVED"; exit $code')
    command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", str(mount),
               *_train(run, run_inputs, "max_steps=6", "checkpoint.every_steps=2", "checkpoint.keep_last=2")]
    started = time.monotonic()
    job = start(command, out / "job.log", RUN=str(run), SAVED=str(saved))
    code = _ended_within(job, 300, out)
    print(f"the run on a full disk ended {time.monotonic() - started:.1f} s after it started (code {code})")
    log = tail(out)
    assert code == 1, log
    assert "no space left on the device while writing" in log and str(run / "checkpoints") in log, log
    assert "basic_ios" not in log.splitlines()[-1]
    failed_at = log.rindex("no space left")
    assert "Traceback" not in log[failed_at - 2000:], "a user's problem, not a bug: no traceback"
    intact = latest_complete(saved / "checkpoints")
    assert intact.name == "step-2" and damage_in_share(CheckpointFolder(intact)) == []

    # The same command on a larger disk continues from step 2 (the copy stands in for the freed disk).
    again = tmp_path / "again"
    shutil.copytree(saved, again)
    job = start(_train(again, run_inputs, "max_steps=4", "checkpoint.every_steps=2"), again / "job.log")
    assert finish(job, again) == 0, tail(again)
    assert f"resumed from {again / 'checkpoints' / 'step-2'}" in tail(again)


# ---------------------------------------------------------------------------------------------
# a rank killed


def test_a_killed_rank_ends_the_survivor_within_the_bound(run_inputs, tmp_path):
    """Two ranks started without a launcher that would kill stragglers (as srun without
    --kill-on-bad-exit starts them): SIGKILL one mid-run, and the other ends, non-zero, in time."""
    run = tmp_path / "run"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = _train(run, run_inputs, "max_steps=400", "checkpoint.every_steps=1000")
    ranks = [start(command, tmp_path / f"rank{r}.log", RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                   LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)) for r in range(2)]
    wait_for(lambda: max(metrics(run), default=0) >= 3, ranks[0], tmp_path, log="rank0.log")
    kill_tree(ranks[1].pid)
    killed = time.monotonic()
    code = _ended_within(ranks[0], EXIT_BOUND_S, tmp_path, "rank0.log")
    took = time.monotonic() - killed
    print(f"survivor ended {took:.1f} s after its peer's SIGKILL (code {code})")
    assert code != 0 and took < EXIT_BOUND_S
    assert ranks[1].wait(timeout=30) == -signal.SIGKILL


# ---------------------------------------------------------------------------------------------
# flipped bytes


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_refused_by_name_and_the_run_falls_back(run_inputs, tmp_path):
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    steps = ["max_steps=8", "checkpoint.every_steps=4", "checkpoint.keep_last=2"]
    assert finish(launch(run, run_inputs, *steps, nproc=0), run) == 0, tail(run)
    straight = metrics(run)
    marker = CheckpointFolder(ckpts / "step-8").marker()
    optimizer = next(p for p in (ckpts / "step-8").iterdir() if p.name.endswith("optim_states.pt"))
    assert marker["files"][optimizer.name]["bytes"] == optimizer.stat().st_size
    _flip_middle(optimizer)

    # Named explicitly: refused, naming the file, before any weights are built.
    job = launch(run, run_inputs, *steps, "checkpoint.resume=step-8", nproc=0)
    assert finish(job, run) == 2, tail(run)
    assert f"{optimizer} is damaged" in tail(run)

    # auto: skipped with a warning; the run resumes from step 4 and logs steps 5..8 as the straight run did.
    assert finish(launch(run, run_inputs, *steps, nproc=0), run) == 0, tail(run)
    log = tail(run)
    assert f"{ckpts / 'step-8'} is damaged and skipped: {optimizer} is damaged" in log
    assert f"resumed from {ckpts / 'step-4'}" in log
    again = metrics(run)
    for step in range(5, 9):
        for key in ("loss", "grad_norm", "tokens", "samples"):
            assert again[step][key] == pytest.approx(straight[step][key], rel=1e-6, abs=1e-9), (step, key)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, 9)), "steps past the checkpoint are not logged twice"
    assert damage_in_share(CheckpointFolder(ckpts / "step-8")) == [], "the damaged step-8 was replaced"


# ---------------------------------------------------------------------------------------------
# two runs on one run folder


def test_a_second_run_on_a_folder_is_refused_and_a_dead_holder_is_taken_over(run_inputs, tmp_path):
    run = tmp_path / "run"
    first = launch(run, run_inputs, "max_steps=400", nproc=0)
    wait_for(lambda: max(metrics(run), default=0) >= 1, first, run)
    holder = json.loads((run / "LOCK").read_text())
    assert (holder["host"], holder["pid"]) == (socket.gethostname(), first.pid)

    second = start(_train(run, run_inputs, "max_steps=400"), tmp_path / "second.log")
    assert _ended_within(second, 120, tmp_path, "second.log") == 1
    refusal = tail(tmp_path, "second.log")
    assert f"{run} is in use by another run (host {socket.gethostname()!r}, pid {first.pid}" in refusal, refusal
    assert first.poll() is None, "the first run goes on"

    kill_tree(first.pid)  # a crash: the lock stays behind, its holder gone
    first.wait()
    assert (run / "LOCK").exists()
    resumed = latest_complete(run / "checkpoints")
    third = launch(run, run_inputs, f"max_steps={int(resumed.name.split('-')[1]) + 1 if resumed else 2}", nproc=0)
    assert finish(third, run) == 0, tail(run)
    assert "taking over the lock of a run that is gone" in tail(run)
    assert not (run / "LOCK").exists(), "released at the end"


def _renew_until(path: Path, done: threading.Event) -> None:
    while not done.wait(0.2):
        os.utime(path)


def test_another_hosts_lease_is_waited_out_or_taken_over_when_it_lapsed(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "LEASE_S", 2.0)
    monkeypatch.setattr(run_lock, "RENEW_S", 0.5)
    path = tmp_path / run_lock.LOCK_FILE
    path.write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "since": time.time()}))
    done = threading.Event()
    holder = threading.Thread(target=_renew_until, args=(path, done))
    holder.start()  # the other host's run, renewing its lease
    started = time.monotonic()
    try:
        with pytest.raises(RunFolderLocked, match="host 'node-elsewhere', pid 1"):
            RunLock(tmp_path).acquire()
    finally:
        done.set()
        holder.join()
    assert 2.0 <= time.monotonic() - started < 10, "a renewed lease of another host is waited out, then refused"

    old = time.time() - 10
    os.utime(path, (old, old))  # not renewed for longer than the lease: its holder is gone
    lock = RunLock(tmp_path).acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    path.write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "token": "theirs"}))
    with pytest.raises(RunFolderLocked, match="no longer this run's"):
        lock.check()
    lock.release()
    assert path.exists(), "a lock that is not ours is left alone"


# ---------------------------------------------------------------------------------------------
# exit 75 through torchrun


def test_launch_script_passes_exit_75_through_torchrun(run_inputs, tmp_path):
    """torchrun turns its workers' 75 into 1; launch/train_node.sh gives the scheduler 75 back."""
    run = tmp_path / "run"
    flags = [f"--{s}" for s in trainer_args(run, run_inputs, ["max_steps=400"])]
    job = start(["bash", str(ROOT / "launch" / "train_node.sh"), "debug", *flags], run / "job.log",
                NPROC="2", PYTHON=sys.executable)
    wait_for(lambda: max(metrics(run), default=0) >= 2, job, run)
    os.killpg(job.pid, signal.SIGTERM)  # the script, torchrun's agent (which signals its workers)
    assert _ended_within(job, 120, run) == 75, tail(run)
    assert "stopped by signal" in tail(run) and latest_complete(run / "checkpoints") is not None


def test_a_build_lock_left_by_a_killed_process_is_named(tmp_path, monkeypatch):
    from videobert.trainer import distributed

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    old, fresh = tmp_path / "deepspeed_shm_comm" / "lock", tmp_path / "other_op" / "lock"
    for lock in (old, fresh):
        lock.parent.mkdir()
        lock.touch()
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    assert distributed.stale_extension_locks() == [old]  # a build running now keeps its lock young
    warned: list[str] = []
    # the message itself, not a handler: logging's per-logger level cache and whatever an earlier run
    # in this process configured decide whether a handler sees it, which is not what is tested here
    monkeypatch.setattr(distributed.log, "warning", lambda msg, *args: warned.append(msg % args))
    distributed.import_deepspeed.cache_clear()  # once per process: an earlier test imported it already
    distributed.import_deepspeed()
    text = "\n".join(warned)
    assert f"{old} is 60 minutes old" in text and "delete it if no build is running" in text
    assert str(fresh) not in text
