"""Training jobs as the tests start them: real processes (torchrun, DeepSpeed ZeRO-3 on gloo), their logs,
metrics, audits and the signals a scheduler would send."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from videobert.trainer.audit import read_audit
from videobert.trainer.run_folder import RunFolder

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("elastic_probe.py")


def job_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def trainer_args(run_dir: Path, inputs: Path, overrides: list[str]) -> list[str]:
    return [
        f"run_dir={run_dir}", f"data.train={inputs / 'train'}", f"data.codebook={inputs / 'codebook.safetensors'}",
        f"deepspeed_config={ROOT / 'ds_config.json'}", "model.init=", "model.preset=tiny", "data.text_model=minilm",
        "logging.every_steps=1", "logging.progress=false", "checkpoint.every_steps=4", "checkpoint.keep_last=2",
        *overrides,
    ]


def train_command(run_dir: Path, inputs: Path, nproc: int, overrides: list[str], probe: Path | None = None) -> list[str]:
    """``trainer.train`` (or the probe, which records the engine state) on ``nproc`` ranks (0: a plain process)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    if nproc == 0:
        launcher = [sys.executable]
    settings = trainer_args(run_dir, inputs, overrides)
    if probe:
        return [*launcher, str(PROBE), str(probe), *settings]
    return [*launcher, "-m", "videobert.trainer.train", "--config", "debug", *(f"--{s}" for s in settings)]


def launch(run_dir: Path, inputs: Path, *overrides: str, nproc: int = 2, probe: Path | None = None) -> subprocess.Popen:
    """Start a training job in its own process group (so that a test can signal all of it)."""
    return start(train_command(run_dir, inputs, nproc, list(overrides), probe), run_dir / "job.log")


def start(command: list[str], log_path: Path, **env: str) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    return subprocess.Popen(command, env=job_env(**env), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def finish(job: subprocess.Popen, run_dir: Path, timeout: float = 300) -> int:
    try:
        return job.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(job.pid)
        pytest.fail(f"training did not finish in {timeout} s:\n{tail(run_dir)}")


def tail(run_dir: Path, name: str = "job.log") -> str:
    path = Path(run_dir) / name
    return path.read_text(errors="replace")[-6000:] if path.exists() else ""


def metrics(run_dir: Path) -> dict[int, dict]:
    """The last logged values of each step (a resumed run logs some steps twice)."""
    path = RunFolder(run_dir).metrics
    if not path.exists():
        return {}
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {m["step"]: m for m in lines if m["split"] == "train"}


def wait_for(predicate, job: subprocess.Popen, run_dir: Path, timeout: float = 300, log: str = "job.log") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if job.poll() is not None:
            pytest.fail(f"job ended (code {job.returncode}) before the awaited point:\n{tail(run_dir, log)}")
        if time.monotonic() > deadline:
            kill_tree(job.pid)
            pytest.fail(f"timed out waiting:\n{tail(run_dir, log)}")
        time.sleep(0.005)


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children[int(fields[1])].append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    for p in descendants(pid):
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def audit_by_epoch(run_dir: Path, up_to_step: int) -> dict[int, collections.Counter]:
    """How often each sample key was consumed in each epoch, by the audited steps up to ``up_to_step``."""
    seen: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for path in sorted(RunFolder(run_dir).audit_dir.glob("rank-*.jsonl")):
        for line in read_audit(path):
            if line["step"] <= up_to_step:
                seen[line["epoch"]].update(line["keys"])
    return seen
