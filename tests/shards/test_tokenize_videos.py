"""The full-corpus path (``shards tokenize-videos``): videos + transcripts + codebook -> token shards in
one pass, the same samples as ``prepare`` followed by ``tokenize``; and ``prepare --sample``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from videobert.shards import reader, schema
from videobert.shards.parts import in_sample
from videobert.trainer import cli

pytestmark = pytest.mark.slow  # a rendered corpus through prepare, fit-codebook, tokenize and the one pass

CLIP_OPTIONS = ("--fps", 10, "--size", 64, "--clip-len", 15, "--no-progress")
"""The synthetic encoder's clips (10 fps, 64 x 64, 15 frames)."""


def shards_cli(*argv) -> int:
    return cli.main(["shards", *map(str, argv)])


def read_all(folder: Path) -> dict[str, schema.Sample]:
    return {s.key: s for s in reader.iter_samples(reader.resolve_shards(folder))}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A rendered synthetic corpus (5 videos), prepared into clip shards of 6 samples, a codebook fitted
    on them, and their token shards (``tokenize``)."""
    root = tmp_path_factory.mktemp("full")
    assert shards_cli("synth", "--out", root / "synth", "--train-videos", 5, "--heldout-videos", 1, "--size", 64,
                      "--fps", 10, "--segments", 4, 6, "--segment-seconds", 3, 4, "--workers", 2) == 0
    assert shards_cli("prepare", *inputs(root), "--out", root / "clips", "--max-samples", 6, "--workers", 2,
                      *CLIP_OPTIONS) == 0
    assert shards_cli("fit-codebook", "--clips", root / "clips", "--out", root / "codebook", "--encoder", "synthetic",
                      "--depth", 2, "--branching", 4, "--no-progress") == 0
    assert shards_cli("tokenize", "--clips", root / "clips", "--codebook", root / "codebook", "--out", root / "tokens",
                      "--workers", 1, "--no-progress") == 0
    return root


def inputs(root: Path) -> tuple:
    return ("--videos", root / "synth" / "train" / "videos", "--transcripts", root / "synth" / "train" / "captions.json")


def tokenize_videos(root: Path, out: Path, *more) -> int:
    return shards_cli("tokenize-videos", *inputs(root), "--codebook", root / "codebook", "--out", out,
                      *CLIP_OPTIONS, *more)


@pytest.fixture(scope="module")
def direct(corpus) -> Path:
    out = corpus / "direct"
    assert tokenize_videos(corpus, out, "--max-samples", 6, "--workers", 2) == 0
    return out


def test_the_token_shards_are_those_of_prepare_then_tokenize(corpus, direct):
    made = reader.resolve_shards(direct)
    assert [Path(u).name for u in made] == [Path(u).name for u in reader.resolve_shards(corpus / "tokens")]
    for url in made:
        assert Path(url).read_bytes() == (corpus / "tokens" / Path(url).name).read_bytes(), "same keys, text, ids"
    clips = json.loads((corpus / "clips" / schema.SUMMARY_FILE).read_text())
    summary = json.loads((direct / schema.SUMMARY_FILE).read_text())
    for name in ("videos_read", "segments_read", "segments_written", "segments_skipped", "clips", "frames_decoded"):
        assert summary[name] == clips[name], name
    assert summary["segments_written"] + summary["segments_skipped"] == summary["segments_read"]
    assert summary["stage"] == "tokenize-videos" and summary["codebook_hash"]
    assert summary["bytes"] * 50 < clips["bytes"], "token shards are a small fraction of the clips"
    lines = lambda folder: sorted(json.loads(x)["reason"] for x in (folder / schema.ERRORS_FILE).read_text().splitlines())
    assert lines(direct) == lines(corpus / "clips")
    assert not [p for p in direct.iterdir() if p.name.startswith("spool-") or p.suffix == ".partial"]


def test_parts_combine_to_the_same_samples(corpus, direct, tmp_path):
    out = tmp_path / "parts"
    for index in range(2):
        assert tokenize_videos(corpus, out, "--part", f"{index}/2", "--workers", 1) == 0
    whole = read_all(direct)
    parts = read_all(out)
    assert sorted(parts) == sorted(whole)
    for key, sample in parts.items():
        assert (sample.tokens == whole[key].tokens).all() and sample.meta == whole[key].meta
    assert shards_cli("status", out) == 0
    combined = json.loads((out / schema.SUMMARY_FILE).read_text())
    assert combined["parts"]["complete"] and combined["segments_written"] == len(whole)


def test_a_killed_run_resumes_to_the_same_bytes(corpus, tmp_path):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    command = [sys.executable, "-m", "videobert.trainer.cli", "shards", "tokenize-videos",
               *map(str, inputs(corpus)), "--codebook", str(corpus / "codebook"), "--out", str(killed),
               *map(str, CLIP_OPTIONS), "--max-samples", "1", "--workers", "1"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(killed.glob("*.stats.json"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    assert not (killed / schema.SUMMARY_FILE).exists(), "killed mid-run"
    assert tokenize_videos(corpus, killed, "--max-samples", 1, "--workers", 1) == 0
    assert tokenize_videos(corpus, whole, "--max-samples", 1, "--workers", 2) == 0
    names = [Path(u).name for u in reader.resolve_shards(whole)]
    assert names == [Path(u).name for u in reader.resolve_shards(killed)]
    assert all((killed / n).read_bytes() == (whole / n).read_bytes() for n in names)
    first, again = (json.loads((f / schema.SUMMARY_FILE).read_text()) for f in (killed, whole))
    assert {k: first[k] for k in ("segments_read", "segments_written", "videos_with_samples", "frames_decoded")} == \
        {k: again[k] for k in ("segments_read", "segments_written", "videos_with_samples", "frames_decoded")}


def test_clips_the_codebook_cannot_read_are_refused_at_once(corpus, tmp_path, capsys):
    code = shards_cli("tokenize-videos", *inputs(corpus), "--codebook", corpus / "codebook", "--out", tmp_path / "x",
                      "--fps", 20, "--size", 64, "--clip-len", 15, "--no-progress")
    assert code == 2
    assert "--fps 10 --clip-len 15" in capsys.readouterr().err
    assert not list((tmp_path / "x").glob("shard-*"))


def test_prepare_sample_takes_a_deterministic_share_of_the_videos(corpus, tmp_path, capsys):
    videos = sorted(p.stem for p in (corpus / "synth" / "train" / "videos").iterdir())
    chosen = [v for v in videos if in_sample(v, 0.5)]
    assert 0 < len(chosen) < len(videos), "the fixture's ids should straddle the share"
    out = tmp_path / "sample"
    for index in range(2):
        assert shards_cli("prepare", *inputs(corpus), "--out", out, "--sample", 0.5, "--part", f"{index}/2",
                          "--workers", 1, *CLIP_OPTIONS) == 0
    got = read_all(out)
    assert sorted({s.meta.video_id for s in got.values()}) == chosen
    clips = read_all(corpus / "clips")
    assert sorted(got) == sorted(k for k, s in clips.items() if s.meta.video_id in chosen)
    summary = json.loads((out / schema.SUMMARY_FILE).read_text())
    assert summary["segments_written"] + summary["segments_skipped"] == summary["segments_read"]
    assert summary["videos_read"] == len(chosen)
    code = shards_cli("prepare", *inputs(corpus), "--out", out, "--sample", 0.25, "--part", "0/2", "--workers", 1,
                      *CLIP_OPTIONS)
    assert code == 2 and "--sample was 0.5, now 0.25" in capsys.readouterr().err
