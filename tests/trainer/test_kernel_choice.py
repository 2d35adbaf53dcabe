"""``model.kernels``: validated, resolved on the machine, a run-time choice that checkpoints omit.

The runs are real one-process trainer runs (DeepSpeed ZeRO-3 on the CPU, the packaged tokenizer's
30,522 text ids + 64 visual words); ``triton`` runs in Triton's interpreter there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from videobert.trainer.build import resolve_kernels
from videobert.trainer.checkpoint import consolidated_model
from videobert.trainer.config import ConfigError, load_config
from videobert.trainer.run_folder import MODEL_CONFIG, latest_complete

ROOT = Path(__file__).resolve().parents[2]
DATA = ["data.train=shards/train", "data.codebook=codebook.safetensors"]


def test_unknown_kernel_set_is_a_config_error():
    with pytest.raises(ConfigError, match="model.kernels='fast': use one of auto, triton, reference"):
        load_config(None, DATA + ["model.kernels=fast"])
    assert load_config(None, DATA).model.kernels == "auto"


def test_triton_without_a_gpu_or_the_interpreter_is_refused_with_the_fix(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ConfigError, match="model.kernels=triton: kernel set 'triton' needs a CUDA GPU.*choose 'auto'"):
        resolve_kernels(load_config(None, DATA + ["model.kernels=triton"]))
    assert resolve_kernels(load_config(None, DATA)) == "reference"  # auto without a GPU
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_kernels(load_config(None, DATA + ["model.kernels=triton"])) == "triton"


def _train(run_dir: Path, inputs: Path, kernels: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "videobert.trainer.train", "--config", "debug"] + [f"--{s}" for s in (
        f"run_dir={run_dir}", f"data.train={inputs / 'train'}", f"data.codebook={inputs / 'codebook.safetensors'}",
        f"deepspeed_config={ROOT / 'ds_config.json'}", "model.init=", "model.preset=tiny", "data.text_model=minilm",
        "max_steps=3", "data.num_workers=0", "optim.micro_batch_size=4", "objectives.video_mask_prob=0.5",
        "logging.every_steps=1", "logging.progress=false", "checkpoint.every_steps=3", f"model.kernels={kernels}",
    )]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"}
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _losses(run_dir: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {m["step"]: m for m in rows if m["split"] == "train"}


@pytest.mark.slow
def test_triton_run_equals_reference_run_and_its_checkpoint_loads_on_the_cpu(run_inputs, tmp_path):
    pytest.importorskip("triton")
    runs = {kernels: tmp_path / kernels for kernels in ("reference", "triton")}
    for kernels, run_dir in runs.items():
        done = _train(run_dir, run_inputs, kernels)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert f"on the '{kernels}' kernel set" in done.stderr
    reference, fused = _losses(runs["reference"]), _losses(runs["triton"])
    assert set(reference) == set(fused) == {1, 2, 3}
    for step in reference:  # the same batches, the same weights: fp32 rounding apart, the same losses
        compared = [k for k in reference[step] if k == "loss" or k.endswith(("_mlm_loss", "_acc"))]
        assert "text_mlm_loss" in compared and "video_mlm_loss" in compared
        for key in compared:
            assert fused[step][key] == pytest.approx(reference[step][key], rel=1e-5), (step, key)
    folder = latest_complete(runs["triton"] / "checkpoints")
    assert "kernels" not in json.loads((folder / MODEL_CONFIG).read_text())
    model = consolidated_model(folder)  # no GPU, no interpreter needed: the reference set
    assert model.kernels == "reference"
