"""``videobert demo`` at reduced size: every real stage (render, prepare, fit-codebook, tokenize, DeepSpeed
pretraining of the packaged MiniLM, evaluation) in its own process, then run again into the same folder,
which resumes each stage instead of redoing it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from videobert.shards import schema
from videobert.trainer.run_folder import COMPLETE, RunFolder, step_dirs

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

SMALL = ["--train-videos", "4", "--heldout-videos", "2", "--steps", "4", "--depth", "1", "--branching", "4", "--captioners", "1"]


def demo(out: Path) -> str:
    """The demo's console output (stdout and the log)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "videobert.trainer.cli", "demo", "--out", str(out), *SMALL], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-5000:]
    return done.stdout


def test_the_demo_runs_every_stage_and_resumes(tmp_path):
    out = tmp_path / "demo"
    first = demo(out)
    assert f"run folder: {out}" in first and "time per stage:" in first and "cross-modal" in first
    for split in ("train", "heldout", "eval"):
        clips = json.loads((out / "clips" / split / schema.SUMMARY_FILE).read_text())
        tokens = json.loads((out / "tokens" / split / schema.SUMMARY_FILE).read_text())
        assert clips["segments_written"] + clips["segments_skipped"] == clips["segments_read"] > 0
        assert tokens["samples_written"] == clips["segments_written"] and tokens["clips"] == clips["clips"]
    run = RunFolder(out / "train")
    assert [step for step, _ in step_dirs(run.checkpoints)] == [4] and (run.checkpoint(4).path / COMPLETE).is_file()
    results = json.loads(run.results.read_text())
    assert results["model"]["step"] == 4 and results["zero_shot"]["segments"] == 15
    assert Path(results["report"]) == run.path / "report.md" and "## Zero-shot action classification" in \
        Path(results["report"]).read_text()
    assert json.loads(run.heldout.read_text())["alignment_count"] > 0

    again = demo(out)
    assert again.count("(reused)") == 2, "the corpus and the codebook are reused"
    assert f"resumed from {run.checkpoint(4).path}" in again
    assert [step for step, _ in step_dirs(run.checkpoints)] == [4], "no step trained twice"
    rerun = json.loads(run.results.read_text())
    assert rerun["heldout"] == results["heldout"] and rerun["zero_shot"] == results["zero_shot"]
