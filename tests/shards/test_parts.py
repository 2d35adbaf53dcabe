"""Shard stages split into parts: prepare in three processes equals one run, a killed part resumes, a part
with other options is refused, ``status`` names what is missing, parts from the launcher's variables."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from videobert.shards import reader, schema
from videobert.shards.parts import Part, parse_part, resolve_part, split_status, video_part
from videobert.shards.prepare import PrepareConfig, prepare
from videobert.shards.ranks import torch_variables_from_slurm
from videobert.trainer import cli

ROOT = Path(__file__).resolve().parents[2]
PARTS = 3
CAPTIONS = [(0.0, 1.0, "one"), (1.0, 2.0, "two"), (2.0, 3.0, "three")]
TIMING = ("wall_seconds", "frames_per_second")


def _ids(count: int) -> list[str]:
    """Video ids, YouTube-like, spread so that every part owns at least three."""
    ids = [f"yt{i:02d}-{'abcdefgh'[i % 8]}Q" for i in range(count)]
    assert min(Counter(video_part(v, PARTS) for v in ids).values()) >= 3, "choose other ids"
    return ids


@pytest.fixture(scope="module")
def split_corpus(tmp_path_factory, media) -> Path:
    """12 time-coded videos, their captions, a caption for a video that is absent, a broken file."""
    root = tmp_path_factory.mktemp("split_corpus")
    (root / "videos").mkdir()
    ids = _ids(12)
    for i, video_id in enumerate(ids):
        media.encode(root / "videos" / f"{video_id}.mp4", media.coded_frames(60, tag=20 * i))
    captions = {v: CAPTIONS for v in ids[:-1]} | {"no-such-video": CAPTIONS}  # the last video has none
    (root / "transcripts").mkdir()
    media.caption_json(root / "transcripts" / "caption.json", captions)
    (root / "transcripts" / "broken.srt").write_text("1\n00:00:01,000 --> garbage\ntext\n")
    return root


def _config(corpus: Path, out: Path, **overrides) -> PrepareConfig:
    options = dict(videos=(str(corpus / "videos"),), transcripts=(str(corpus / "transcripts"),), out=str(out),
                   fps=10.0, size=32, clip_len=5, max_samples=2, workers=1, progress=False)
    return PrepareConfig(**(options | overrides))


def _command(corpus: Path, out: Path, part: str, *more: str) -> list[str]:
    return [sys.executable, "-m", "videobert.trainer.cli", "shards", "prepare", "--videos", str(corpus / "videos"), "--transcripts",
            str(corpus / "transcripts"), "--out", str(out), "--fps", "10", "--size", "32", "--clip-len", "5",
            "--workers", "1", "--no-progress", "--part", part, *more]


@pytest.fixture(scope="module")
def split_run(split_corpus, tmp_path_factory):
    """The corpus prepared in one run, and in three parts: three processes started by torchrun (the launch
    script), each taking its part from RANK and WORLD_SIZE."""
    root = tmp_path_factory.mktemp("split_run")
    prepare(_config(split_corpus, root / "whole"))
    options = _command(split_corpus, root / "split", "0/1")[5:-2]  # the stage's options, without --part
    env = {**os.environ, "NPROC": str(PARTS), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(ROOT / "launch/shards_torchrun.sh"), "prepare", *options, "--max-samples", "2"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"whole": root / "whole", "split": root / "split"}


def _samples(folder: Path) -> dict[str, schema.Sample]:
    return {s.key: s for s in reader.iter_samples(reader.resolve_shards(folder))}


def _summary(folder: Path) -> dict:
    return json.loads((folder / schema.SUMMARY_FILE).read_text())


def _problems(folder: Path) -> Counter:
    lines = [json.loads(line) for line in (folder / schema.ERRORS_FILE).read_text().splitlines()]
    return Counter((line["video_id"], line["reason"], line["action"], line["segments"]) for line in lines)


def test_parts_write_what_one_run_writes(split_run):
    whole, split = _samples(split_run["whole"]), _samples(split_run["split"])
    assert sorted(split) == sorted(whole) and len(whole) == 11 * 3
    for key, sample in whole.items():
        other = split[key]
        assert other.text == sample.text and other.meta == sample.meta
        assert other.frames.tobytes() == sample.frames.tobytes()
    for index, folder in schema.part_folders(split_run["split"]):  # each video in its part, and only there
        videos = {s.meta.video_id for s in reader.iter_samples(reader.resolve_shards(folder))}
        assert videos and all(video_part(v, PARTS) == index for v in videos)
    parts = [_summary(folder) for _, folder in schema.part_folders(split_run["split"])]
    reference = _summary(split_run["whole"])
    for key, value in reference.items():
        if isinstance(value, int) and key not in ("shards",):
            assert sum(p[key] for p in parts) == value, key
    combined = _summary(split_run["split"])  # written by the last part to finish
    assert combined["parts"] == {"count": 3, "finished": [0, 1, 2], "unfinished": [], "missing": [],
                                 "other_arguments": [], "complete": True}
    assert {k: v for k, v in combined.items() if k not in TIMING + ("parts", "shards")} == \
        {k: v for k, v in reference.items() if k not in TIMING + ("shards",)}
    merged = sum((_problems(folder) for _, folder in schema.part_folders(split_run["split"])), Counter())
    assert merged == _problems(split_run["whole"])  # every problem listed once, by the part it belongs to


def test_status_names_missing_and_unfinished_parts(split_run, tmp_path, capsys):
    assert cli.main(["shards", "status", str(split_run["split"]), "--no-write"]) == 0
    assert "3 finished, 0 unfinished, 0 missing" in capsys.readouterr().out
    damaged = tmp_path / "damaged"
    shutil.copytree(split_run["split"], damaged)
    shutil.rmtree(schema.part_folder(damaged, 1))
    (schema.part_folder(damaged, 2) / schema.SUMMARY_FILE).unlink()
    assert cli.main(["shards", "status", str(damaged)]) == 1
    out = capsys.readouterr().out
    assert "1 finished, 1 unfinished, 1 missing" in out and "missing (never started): parts 1" in out
    assert "re-run parts 1-2 with the same arguments" in out
    summary = _summary(damaged)
    assert summary["parts"]["missing"] == [1] and summary["parts"]["unfinished"] == [2]
    assert not summary["parts"]["complete"]
    assert summary["segments_read"] == _summary(schema.part_folder(damaged, 0))["segments_read"]


def test_a_part_with_other_options_is_refused(split_corpus, split_run, capsys):
    out = split_run["split"]
    before = sorted(p.name for p in out.rglob("*"))
    assert cli.main(_command(split_corpus, out, "1/3", "--fps", "20")[3:]) == 2
    assert "--fps was 10.0, now 20.0" in capsys.readouterr().err
    assert cli.main(_command(split_corpus, out, "1/4")[3:]) == 2
    assert "split into 3 parts, this part is one of 4" in capsys.readouterr().err
    assert cli.main(_command(split_corpus, out, "0/1")[3:]) == 2  # a run of one part into a split folder
    assert "split into 3 parts" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == before


def test_a_killed_part_resumes_where_it_stopped(split_corpus, tmp_path):
    killed = tmp_path / "killed"
    process = subprocess.Popen(_command(split_corpus, killed, "1/3", "--max-samples", "1"), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    folder = schema.part_folder(killed, 1)
    deadline = time.monotonic() + 120
    while not list(folder.glob("*.stats.json")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)  # the part, its worker and its ffmpeg
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    assert not (folder / schema.SUMMARY_FILE).exists(), "the part finished before it could be interrupted"
    prepare(_config(split_corpus, killed, max_samples=1, part="1/3"))
    prepare(_config(split_corpus, tmp_path / "uninterrupted", max_samples=1, part="1/3"))
    finished = schema.part_folder(tmp_path / "uninterrupted", 1)
    shards = schema.complete_shards(folder)
    assert len(shards) >= 9 and [t.read_bytes() for t in shards] == [t.read_bytes() for t in schema.complete_shards(finished)]
    status = split_status(killed)
    assert [p.index for p in status.finished] == [1] and [p.index for p in status.missing] == [0, 2]


def test_parts_from_the_launchers_variables():
    assert resolve_part(None, {}) == Part(0, 1)
    assert resolve_part("2/5", {"RANK": "1", "WORLD_SIZE": "4"}) == Part(2, 5)  # the flag wins
    torchrun = resolve_part(None, {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (torchrun.index, torchrun.count, torchrun.local_rank, torchrun.source) == (3, 4, 1, "RANK/WORLD_SIZE")
    srun = resolve_part(None, {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"})
    assert (srun.index, srun.count, srun.local_rank) == (5, 8, 1)
    array = resolve_part(None, {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "10",
                                "SLURM_ARRAY_TASK_COUNT": "4"})
    assert (array.index, array.count, array.source) == (2, 4, "SLURM_ARRAY_TASK_ID/COUNT")
    stepped = resolve_part(None, {"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_MIN": "0",
                                  "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "5"})
    assert (stepped.index, stepped.count) == (3, 5)
    nodes = resolve_part(None, {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_PROCID": "2",
                                "SLURM_NTASKS": "4", "SLURM_LOCALID": "2"})  # array of nodes, 4 GPU tasks each
    assert (nodes.index, nodes.count, nodes.local_rank) == (6, 12, 2)
    with pytest.raises(ValueError, match="not one range"):  # a re-run of some tasks: --array=3,17
        resolve_part(None, {"SLURM_ARRAY_TASK_ID": "17", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_MAX": "17",
                            "SLURM_ARRAY_TASK_COUNT": "2"})
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_ID=9"):
        resolve_part(None, {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "4"})
    with pytest.raises(ValueError, match="not a part like"):
        parse_part("3 of 4")
    with pytest.raises(ValueError, match="0 <= I < N"):
        parse_part("4/4")


def test_the_slurm_script_gives_each_task_its_part(tmp_path):
    """launch/shards.sbatch under a stand-in for srun (which starts the task with SLURM's variables)."""
    (tmp_path / "srun").write_text('#!/usr/bin/env bash\nSLURM_PROCID=1 SLURM_NTASKS=2 exec "$@"\n')
    (tmp_path / "python").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')  # shows what it was given
    for name in ("srun", "python"):
        (tmp_path / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "PYTHON": str(tmp_path / "python"),
           "PARTS": "4", "SLURM_ARRAY_TASK_ID": "3", "SLURM_SUBMIT_DIR": str(ROOT)}
    result = subprocess.run(["bash", str(ROOT / "launch/shards.sbatch"), "prepare", "--out", "a folder/with space"],
                            env=env, capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == ["-m", "videobert.trainer.cli", "shards", "prepare", "--out", "a folder/with space", "--part", "7/8"]


def test_the_trainer_reads_slurm_tasks_through_the_same_module():
    srun = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "4(x2)",
            "MASTER_ADDR": "node1"}
    assert torch_variables_from_slurm(srun) == {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                                                "LOCAL_WORLD_SIZE": "4"}
    assert torch_variables_from_slurm({**srun, "RANK": "0"}) == {}  # a torch launcher set its own
    assert torch_variables_from_slurm({**srun, "SLURM_NTASKS": "1"}) == {}


def test_available_cpus_without_sched_getaffinity(monkeypatch):
    from videobert.shards.ranks import available_cpus

    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # as on macOS and Windows
    assert available_cpus() == (os.cpu_count() or 1)
    assert PrepareConfig(videos=("v",), transcripts=("t",), out="o").workers == available_cpus()
