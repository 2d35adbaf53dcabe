"""The project as a user installs it: a wheel built from the repository, installed into a fresh virtual
environment outside it, brings one import name (``videobert``), the shipped recipes and DeepSpeed
config, and a ``videobert`` command that runs the demo at reduced size.

The fresh environment sees the test environment's third-party packages through a path entry (no
package index is needed; the wheel is installed with ``--no-deps``), but not its editable install of
the project: a path entry does not run the ``.pth`` hooks that editable installs rely on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    source = tmp_path_factory.mktemp("source") / "videobert"  # a copy: the build writes into its source folder
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "dist", "runs", "*.egg-info",
                                                                "__pycache__", ".pytest_cache", ".hypothesis"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                           str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (found,) = out.glob("videobert-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh environment holding the wheel; returns its bin folder."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    Path(purelib, "test-environment.pth").write_text("".join(f"{p}\n" for p in sorted(ours)), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv / "bin"


def _run(bin_dir: Path, args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu",
               PYTHONUNBUFFERED="1")
    return subprocess.run(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def test_the_wheel_ships_one_package_with_its_recipes_and_deepspeed_config(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"videobert"}, f"the wheel installs {sorted(tops)}"
    assert "videobert/ds_config.json" in names
    assert {"videobert/launch/recipes/demo.yaml", "videobert/launch/recipes/debug.yaml"} <= set(names)
    shipped = zipfile.ZipFile(wheel).read("videobert/ds_config.json")
    assert shipped == (ROOT / "ds_config.json").read_bytes(), "the shipped DeepSpeed config is the repository's own"
    assert not [n for n in names if n.startswith("videobert/tests/")]


def test_the_installed_command_runs_outside_the_repository(installed, tmp_path):
    python = str(installed / "python")
    where = _run(installed, [python, "-c", "import videobert, videobert.trainer.cli as c; print(videobert.__file__); "
                             "print(videobert.__version__)"], tmp_path)
    assert where.returncode == 0, where.stdout
    assert str(ROOT) not in where.stdout.splitlines()[0], "the wheel's copy is imported, not the repository"
    for name in ("trainer", "models", "shards"):
        gone = _run(installed, [python, "-c", f"import {name}"], tmp_path)
        assert gone.returncode != 0 and "ModuleNotFoundError" in gone.stdout, f"`import {name}` must not find the project"
    helped = _run(installed, ["videobert", "--help"], tmp_path)
    assert helped.returncode == 0 and "videobert shards STAGE" in helped.stdout, helped.stdout


def test_the_installed_demo_runs_at_reduced_size(installed, tmp_path):
    out = tmp_path / "demo"
    done = _run(installed, ["videobert", "demo", "--out", str(out), "--train-videos", "3", "--heldout-videos", "2",
                            "--steps", "2", "--depth", "1", "--branching", "4", "--retrieval-segments", "8",
                            "--captioners", "1"],
                tmp_path, timeout=900)
    assert done.returncode == 0, done.stdout[-5000:]
    assert f"run folder: {out}" in done.stdout and "cross-modal" in done.stdout
    assert (out / "train" / "report.md").is_file()
