"""``fit-codebook`` and ``tokenize`` on clip shards the tests write, and end to end on a rendered corpus."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from videobert.models.visual.codebook import Codebook
from videobert.models.visual.encoder import EncoderSpec
from videobert.models.visual.tokenizer import VisualTokenizer
from videobert.shards import reader, schema
from videobert.shards.fit_features import plan_sample
from videobert.shards.writer import ShardWriter
from videobert.trainer import cli

FPS, CLIP_LEN, SIZE = 10.0, 15, (64, 64)  # the synthetic encoder's spec
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 220), (230, 210, 40)]


def square_clips(colour, n_clips: int, seed: int, clip_len: int = CLIP_LEN, size=SIZE) -> np.ndarray:
    """(n_clips, clip_len, H, W, 3): a coloured square drifting over a noisy grey backdrop."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(100, 120, size=(n_clips, clip_len, *size, 3)).astype(np.uint8)
    for c in range(n_clips):
        x, y = rng.integers(8, size[1] - 30), rng.integers(8, size[0] - 30)
        dx, dy = rng.integers(-1, 2, size=2)
        for t in range(clip_len):
            frames[c, t, y + dy * t: y + dy * t + 16, x + dx * t: x + dx * t + 16] = colour
    return frames


def clip_sample(video: str, segment: int, n_clips: int, seed: int, *, fps=FPS, clip_len=CLIP_LEN, version=None):
    meta = schema.SampleMeta(
        video_id=video, segment_index=segment, start=1.5 * segment, end=1.5 * (segment + n_clips), fps=fps,
        clip_len=clip_len, frame_size=SIZE, n_clips=n_clips, first_frame=int(15 * segment), source="test.json",
        **({"format_version": version} if version else {}),
    )
    frames = square_clips(COLOURS[seed % len(COLOURS)], n_clips, seed, clip_len=clip_len)
    key, text = schema.make_key(video, segment), f"segment {segment} of {video}"
    return schema.Sample(key=key, text=text, meta=meta, frames=frames)


def write_shards(folder: Path, samples: list[schema.Sample], per_shard: int, **stats) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    extra = {"kind": schema.CLIP_KIND, "fps": FPS, "clip_len": CLIP_LEN, "frame_size": list(SIZE), **stats}
    with ShardWriter(folder, max_samples=per_shard, extra=extra) as writer:
        for position, sample in enumerate(samples):
            writer.write(sample, (position,))
    return schema.complete_shards(folder)


def shards_cli(*argv) -> int:
    return cli.main(["shards", *map(str, argv)])


def tokenize_cli(clips, codebook, out, *more) -> int:
    return shards_cli("tokenize", "--clips", clips, "--codebook", codebook, "--out", out, "--no-progress", *more)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """Three clip shards, 10 samples of 1 to 3 clips each."""
    samples = [clip_sample(f"video{v}", s, n_clips=1 + (v + s) % 3, seed=10 * v + s)
               for v in range(5) for s in range(2)]
    folder = tmp_path_factory.mktemp("clips")
    write_shards(folder, samples, per_shard=4)
    return folder


@pytest.fixture(scope="module")
def codebook_dir(clip_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("codebook")
    code = shards_cli("fit-codebook", "--clips", clip_dir, "--out", out, "--encoder", "synthetic",
                      "--depth", 2, "--branching", 3, "--num-clips", 15, "--no-progress")
    assert code == 0
    return out


def read_all(folder: Path) -> list[schema.Sample]:
    return list(reader.iter_samples(reader.resolve_shards(folder)))


# ---------------------------------------------------------------------------------------------------
# fit-codebook


def test_fit_codebook_writes_a_codebook_of_the_encoder(codebook_dir):
    book = Codebook.load(codebook_dir)
    summary = json.loads((codebook_dir / schema.SUMMARY_FILE).read_text())
    assert book.spec.name == "synthetic"
    assert (book.spec.fps, book.spec.clip_len, book.spec.frame_size) == (FPS, CLIP_LEN, SIZE)
    assert (book.depth, book.branching, book.feature_count) == (2, 3, 15)
    assert summary["codebook_hash"] == book.hash and summary["clips_used"] == 15 and summary["clips_available"] == 20
    assert summary["shards"] == 3 and len(summary["inertia"]) == 2 and 1 <= summary["leaves_used"] <= 9
    assert not (codebook_dir / "features.npy").exists()  # temporary unless --keep-features
    with Image.open(codebook_dir / "leaves.png") as picture:  # example frames per visual word
        assert picture.format == "PNG" and picture.width > 4 * 48 and picture.height >= 48


def test_clip_sample_is_spread_over_shards_and_seeded(clip_dir):
    urls = reader.resolve_shards(clip_dir)
    spec = EncoderSpec(name="synthetic", fps=FPS, clip_len=CLIP_LEN, frame_size=SIZE, feature_dim=29)
    clips = [reader.read_stats(u)["clips"] for u in urls]
    plans = plan_sample(urls, 10, seed=3, encoder_spec=spec, errors=[])
    taken = [len(p.chosen) for p in plans]
    assert sum(taken) == 10 and all(abs(t - 10 * c / sum(clips)) < 1 for t, c in zip(taken, clips))
    assert all(np.all(np.diff(p.chosen) > 0) and (len(p.chosen) == 0 or p.chosen[-1] < p.clips) for p in plans)
    again = plan_sample(urls, 10, seed=3, encoder_spec=spec, errors=[])
    other = plan_sample(urls, 10, seed=4, encoder_spec=spec, errors=[])
    assert all(np.array_equal(a.chosen, b.chosen) for a, b in zip(plans, again))
    assert not all(np.array_equal(a.chosen, b.chosen) for a, b in zip(plans, other))
    everything = plan_sample(urls, 1000, seed=3, encoder_spec=spec, errors=[])
    assert [len(p.chosen) for p in everything] == clips


def test_fit_codebook_refuses_clips_of_another_spec(tmp_path, capsys):
    write_shards(tmp_path / "clips", [clip_sample("v", 0, 2, 0, fps=20.0)], per_shard=4, fps=20.0)
    code = shards_cli("fit-codebook", "--clips", tmp_path / "clips", "--out", tmp_path / "cb", "--encoder", "synthetic",
                      "--depth", 1, "--branching", 2, "--no-progress")
    assert code == 2
    message = capsys.readouterr().err
    assert "fps 20 (expected 10)" in message and "encoder 'synthetic' expects 10 fps" in message
    assert not (tmp_path / "cb" / "codebook.safetensors").exists()


def test_fit_codebook_keeps_an_existing_codebook(clip_dir, codebook_dir, capsys):
    before = (codebook_dir / "codebook.safetensors").read_bytes()
    code = shards_cli("fit-codebook", "--clips", clip_dir, "--out", codebook_dir, "--encoder", "synthetic",
                      "--depth", 1, "--branching", 2, "--no-progress")
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert (codebook_dir / "codebook.safetensors").read_bytes() == before


# ---------------------------------------------------------------------------------------------------
# tokenize


def test_tokenize_replaces_frames_by_tokens(clip_dir, codebook_dir, tmp_path):
    out = tmp_path / "tokens"
    assert tokenize_cli(clip_dir, codebook_dir, out, "--workers", 1, "--batch-size", 4, "--keep-features") == 0
    clips, tokens = read_all(clip_dir), read_all(out)
    book = Codebook.load(codebook_dir)
    tokenizer = VisualTokenizer.from_codebook(codebook_dir)
    assert [s.key for s in tokens] == [s.key for s in clips]
    for c, t in zip(clips, tokens):
        assert t.text == c.text and t.frames is None
        assert t.meta.kind == schema.TOKEN_KIND and t.meta.codebook_hash == book.hash
        assert t.meta.video_id == c.meta.video_id and t.meta.n_clips == c.meta.n_clips
        assert t.tokens.dtype == np.int32 and t.tokens.shape == (c.meta.n_clips,)
        expected = tokenizer(torch.from_numpy(c.frames))
        assert np.array_equal(t.tokens, expected.numpy())
        assert t.features.dtype == np.float16
        features = tokenizer.encode(torch.from_numpy(c.frames)).numpy()
        np.testing.assert_allclose(t.features, features, rtol=2e-3, atol=2e-3)
    summary = json.loads((out / schema.SUMMARY_FILE).read_text())
    assert (summary["samples_read"], summary["samples_written"], summary["samples_skipped"]) == (10, 10, 0)
    assert summary["clips"] == 20 and summary["shards_written"] == 3 and summary["codebook_hash"] == book.hash
    assert json.loads(schema.stats_path(out / schema.shard_name(0)).read_text())["codebook_hash"] == book.hash


def test_output_does_not_depend_on_workers_and_resumes(clip_dir, codebook_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert tokenize_cli(clip_dir, codebook_dir, one, "--workers", 1) == 0
    assert tokenize_cli(clip_dir, codebook_dir, two, "--workers", 2) == 0
    names = [schema.shard_name(i) for i in range(3)]
    assert all((one / n).read_bytes() == (two / n).read_bytes() for n in names)
    # A run killed midway: shard 1 renamed but not committed, shard 2 still being written.
    schema.stats_path(two / names[1]).unlink()
    (two / names[2]).rename(two / (names[2] + schema.PARTIAL_SUFFIX))
    schema.stats_path(two / names[2]).unlink()
    assert tokenize_cli(clip_dir, codebook_dir, two, "--workers", 1) == 0
    summary = json.loads((two / schema.SUMMARY_FILE).read_text())
    assert summary["shards_kept"] == 1 and summary["samples_written"] == 10
    assert all((one / n).read_bytes() == (two / n).read_bytes() for n in names)
    assert not list(two.glob("*" + schema.PARTIAL_SUFFIX))


def test_another_codebook_is_refused_for_an_existing_output(clip_dir, codebook_dir, tmp_path, capsys):
    out = tmp_path / "tokens"
    assert tokenize_cli(clip_dir, codebook_dir, out, "--workers", 1) == 0
    other = tmp_path / "other"
    assert shards_cli("fit-codebook", "--clips", clip_dir, "--out", other, "--encoder", "synthetic", "--depth", 1,
                      "--branching", 4, "--keep-features", "--no-progress") == 0
    kept = np.load(other / "features.npy")
    assert kept.shape == (20, Codebook.load(other).feature_dim) and kept.dtype == np.float32
    capsys.readouterr()
    assert tokenize_cli(clip_dir, other, out) == 2
    message = capsys.readouterr().err
    assert Codebook.load(codebook_dir).hash in message and Codebook.load(other).hash in message
    assert tokenize_cli(clip_dir, other, out, "--workers", 1, "--overwrite") == 0
    assert {s.meta.codebook_hash for s in read_all(out)} == {Codebook.load(other).hash}


def write_raw_tar(path: Path, samples: list[dict]) -> Path:
    with wds.TarWriter(str(path), encoder=False) as sink:
        for sample in samples:
            sink.write(sample)
    return path


def test_bad_inputs_are_listed_and_the_run_goes_on(clip_dir, codebook_dir, tmp_path):
    good = schema.complete_shards(clip_dir)[0]
    bad = tmp_path / "bad"
    write_shards(bad / "version", [clip_sample("old", 0, 1, 1, version=2), clip_sample("new", 0, 2, 2)], per_shard=9)
    write_shards(bad / "fps", [clip_sample("fast", 0, 1, 3, fps=25.0)], per_shard=9)
    empty_meta = dataclasses.replace(clip_sample("empty", 0, 1, 4).meta, n_clips=0)
    empty = write_raw_tar(bad / "empty.tar", [{
        "__key__": "empty-s00000", schema.TEXT: b"nothing here", schema.META: empty_meta.to_json(),
        schema.FRAMES: schema.encode_array(np.zeros((0, CLIP_LEN, *SIZE, 3), np.uint8)),
    }])
    truncated = bad / "truncated.tar"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2 + 100])
    token_meta = dataclasses.replace(clip_sample("tok", 0, 1, 5).meta, kind=schema.TOKEN_KIND, codebook_hash="x")
    token_sample = schema.Sample(key="tok-s00000", text="t", meta=token_meta, tokens=np.zeros(1, np.int32))
    write_shards(bad / "tokens", [token_sample], per_shard=9)
    out = tmp_path / "out"
    inputs = [good, bad / "version", bad / "fps", empty, truncated, bad / "tokens"]
    code = shards_cli("tokenize", "--clips", *inputs, "--codebook", codebook_dir, "--out", out, "--workers", 1,
                      "--no-progress")
    assert code == 0
    lines = [json.loads(line) for line in (out / schema.ERRORS_FILE).read_text().splitlines()]
    reasons = {(Path(line["input"]).name, line["key"]): line["reason"] for line in lines}
    assert "shard format version 2" in reasons[("shard-000000.tar", "old-s00000")]
    assert "fps 25 (expected 10)" in reasons[("shard-000000.tar", "fast-s00000")]
    assert "n_clips is 0" in reasons[("empty.tar", "empty-s00000")]
    assert "tokenize reads clip shards" in reasons[("shard-000000.tar", "tok-s00000")]
    cut = [line for line in lines if line["input"] == str(truncated)]
    assert any(line["key"] is None and "truncated" in line["reason"] for line in cut)
    summary = json.loads((out / schema.SUMMARY_FILE).read_text())
    assert summary["samples_written"] + summary["samples_skipped"] == summary["samples_read"]
    assert summary["samples_skipped"] == 4 and summary["shards_written"] == 6
    written = {s.key for s in read_all(out)}
    assert "new-s00000" in written and {s.key for s in read_all(good)} <= written


def test_samples_that_break_the_schema_never_reach_the_output(clip_dir, codebook_dir, tmp_path):
    """Metadata of the wrong types and a key holding a path: each listed with its key, the good sample
    written, and no member name of the output carries a '/'."""
    good = clip_sample("good", 0, 1, 1)
    encoded = schema.encode_sample(good)
    bad_meta = {"frame_size": None, "n_clips": "3", "fps": "x", "video_id": [1]}
    raws = [encoded] + [
        {**encoded, "__key__": f"bad{i}-s00000", schema.META: json.dumps({**json.loads(good.meta.to_json()), name: value}).encode()}
        for i, (name, value) in enumerate(bad_meta.items())
    ] + [{**encoded, "__key__": "dir/evil-s00000"}, {**encoded, "__key__": "list-s00000", schema.META: b"[1]"}]
    path = write_raw_tar(tmp_path / "hostile.tar", raws)
    assert tokenize_cli(path, codebook_dir, tmp_path / "out", "--workers", 1) == 0
    lines = {line["key"]: line["reason"] for line in map(json.loads, (tmp_path / "out" / schema.ERRORS_FILE).read_text().splitlines())}
    assert "frame_size is None, expected [height, width]" in lines["bad0-s00000"]
    assert "n_clips is '3', expected an integer >= 1" in lines["bad1-s00000"]
    assert "fps is 'x', expected a positive number" in lines["bad2-s00000"]
    assert "video_id is [1], expected a string" in lines["bad3-s00000"]
    assert "is not a sample key" in lines["dir/evil-s00000"]
    assert "metadata is a JSON list, expected an object" in lines["list-s00000"]
    assert [s.key for s in read_all(tmp_path / "out")] == ["good-s00000"]
    with tarfile.open(schema.complete_shards(tmp_path / "out")[0]) as tar:
        assert all("/" not in name for name in tar.getnames())
    summary = json.loads((tmp_path / "out" / schema.SUMMARY_FILE).read_text())
    assert (summary["samples_read"], summary["samples_written"], summary["samples_skipped"]) == (7, 1, 6)


@pytest.mark.slow
def test_resume_after_a_real_kill(codebook_dir, tmp_path):
    """tokenize killed with SIGKILL mid-run (the process and its workers), then run again: the output is
    the bytes of an uninterrupted run, and nothing a reader takes for a shard was ever half-written."""
    samples = [clip_sample(f"video{v}", 0, n_clips=1 + v % 2, seed=v) for v in range(16)]
    write_shards(tmp_path / "clips", samples, per_shard=1)
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    command = [sys.executable, "-m", "videobert.trainer.cli", "shards", "tokenize", "--clips", str(tmp_path / "clips"), "--codebook",
               str(codebook_dir), "--out", str(killed), "--workers", "2", "--no-progress"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(killed.glob("*.stats.json")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    done = len(list(killed.glob("*.stats.json")))
    assert 1 <= done < 16 and not (killed / schema.SUMMARY_FILE).exists(), "killed mid-run"
    for tar in reader.resolve_shards(killed):  # whatever a reader takes for a shard is whole
        assert len(list(reader.iter_samples([tar]))) == reader.read_stats(tar)["samples"]
    assert tokenize_cli(tmp_path / "clips", codebook_dir, killed, "--workers", 1) == 0
    assert tokenize_cli(tmp_path / "clips", codebook_dir, whole, "--workers", 1) == 0
    names = [schema.shard_name(i) for i in range(16)]
    assert all((killed / n).read_bytes() == (whole / n).read_bytes() for n in names)
    summary = json.loads((killed / schema.SUMMARY_FILE).read_text())
    assert summary["shards_kept"] >= 1 and summary["samples_written"] == 16


def test_nothing_matching_exits_with_1(codebook_dir, tmp_path, capsys):
    write_shards(tmp_path / "clips", [clip_sample("v", 0, 1, 0, clip_len=10)], per_shard=4, clip_len=10)
    code = tokenize_cli(tmp_path / "clips", codebook_dir, tmp_path / "out", "--workers", 1)
    assert code == 1
    assert "nothing could be tokenized" in capsys.readouterr().out
    line = json.loads((tmp_path / "out" / schema.ERRORS_FILE).read_text())
    assert "clip length 10 frames (expected 15)" in line["reason"]


def test_encoder_that_cannot_be_built_stops_at_once(clip_dir, tmp_path, capsys):
    spec = EncoderSpec(name="s3d", fps=FPS, clip_len=CLIP_LEN, frame_size=SIZE, feature_dim=1024)
    Codebook(spec=spec, centroids=[torch.randn(1, 2, 1024)]).save(tmp_path / "cb")
    code = tokenize_cli(clip_dir, tmp_path / "cb", tmp_path / "out")
    assert code == 2 and "s3d needs its weights" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("shard-*"))


# ---------------------------------------------------------------------------------------------------
# End to end: rendered synthetic corpus -> prepare -> fit-codebook -> tokenize


@pytest.fixture(scope="module")
def synthetic_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    assert shards_cli("synth", "--out", root / "synth", "--train-videos", 8, "--heldout-videos", 1, "--size", 64,
                      "--fps", 10, "--segments", 5, 7, "--segment-seconds", 3, 4, "--workers", 2) == 0
    assert shards_cli("prepare", "--videos", root / "synth" / "train" / "videos", "--transcripts",
                      root / "synth" / "train" / "captions.json", "--out", root / "clips", "--fps", 10, "--size", 64,
                      "--clip-len", 15, "--workers", 2, "--no-progress") == 0
    assert shards_cli("fit-codebook", "--clips", root / "clips", "--out", root / "codebook", "--encoder", "synthetic",
                      "--depth", 2, "--branching", 4, "--no-progress") == 0
    assert tokenize_cli(root / "clips", root / "codebook", root / "tokens", "--workers", 1) == 0
    return root


def labelled_tokens(root: Path) -> list[tuple[int, str, str]]:
    """(token, verb, noun) of every clip whose middle falls inside a labelled segment."""
    labels = collections.defaultdict(list)
    for line in (root / "synth" / "labels.jsonl").read_text().splitlines():
        row = json.loads(line)
        labels[row["video"]].append(row)
    found = []
    for sample in read_all(root / "tokens"):
        meta = sample.meta
        for i, token in enumerate(sample.tokens):
            middle = (meta.first_frame + (i + 0.5) * meta.clip_len) / meta.fps
            rows = [r for r in labels[meta.video_id] if r["start"] <= middle < r["end"]]
            if rows:
                found.append((int(token), rows[0]["verb"], rows[0]["noun"]))
    return found


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.unique(a, return_inverse=True)[1], np.unique(b, return_inverse=True)[1]
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1.0)
    joint /= joint.sum()
    independent = joint.sum(1, keepdims=True) @ joint.sum(0, keepdims=True)
    seen = joint > 0
    return float((joint[seen] * np.log(joint[seen] / independent[seen])).sum())


@pytest.mark.slow
def test_tokens_carry_the_verb_and_the_noun(synthetic_corpus):
    rows = labelled_tokens(synthetic_corpus)
    assert len(rows) >= 80
    tokens = np.array([r[0] for r in rows])
    assert len(set(tokens)) >= 8  # the clips spread over the codebook
    rng = np.random.default_rng(0)
    for column, name in ((1, "verb"), (2, "noun")):
        labels = np.array([r[column] for r in rows])
        real = mutual_information(tokens, labels)
        # Chance level: the same tokens against shuffled labels. An encoder blind to the pixels
        # (or one token for everything) gives no more than chance.
        shuffled = [mutual_information(tokens, rng.permutation(labels)) for _ in range(200)]
        assert real > 1.5 * max(shuffled), f"{name}: mutual information {real:.3f} vs chance up to {max(shuffled):.3f}"


@pytest.mark.slow
def test_end_to_end_counts_agree_and_tokens_are_reproducible(synthetic_corpus, tmp_path):
    root = synthetic_corpus
    clips = json.loads((root / "clips" / schema.SUMMARY_FILE).read_text())
    tokens = json.loads((root / "tokens" / schema.SUMMARY_FILE).read_text())
    assert tokens["samples_read"] == clips["segments_written"] == tokens["samples_written"]
    assert tokens["clips"] == clips["clips"] and tokens["codebook_hash"] == Codebook.load(root / "codebook").hash
    again = tmp_path / "again"
    assert tokenize_cli(root / "clips", root / "codebook", again, "--workers", 1, "--batch-size", 7) == 0
    for shard in schema.complete_shards(root / "tokens"):
        assert (again / shard.name).read_bytes() == shard.read_bytes()


def test_compressed_clip_shards_tokenize_like_raw_ones(clip_dir, codebook_dir, tmp_path):
    samples = read_all(clip_dir)
    tokens = {}
    for codec in ("raw", "png", "jpeg"):
        clips = tmp_path / f"clips-{codec}"
        write_shards(clips, [dataclasses.replace(s, frame_codec=codec) for s in samples], per_shard=4)
        assert {s.frame_codec for s in read_all(clips)} == {codec}
        assert tokenize_cli(clips, codebook_dir, tmp_path / f"tokens-{codec}") == 0
        tokens[codec] = {s.key: s.tokens.tolist() for s in read_all(tmp_path / f"tokens-{codec}")}
    assert tokens["png"] == tokens["raw"]  # lossless: the same visual words
    assert tokens["jpeg"].keys() == tokens["raw"].keys()
    same = [a == b for k in tokens["raw"] for a, b in zip(tokens["raw"][k], tokens["jpeg"][k])]
    assert sum(same) / len(same) >= 0.8, same
