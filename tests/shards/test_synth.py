"""The built-in synthetic corpus: determinism, layout, transcripts, labels, real H.264 videos."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import ffmpeg
import numpy as np
import pytest

from videobert.shards.synthetic import corpus as synth
from videobert.shards.synthetic import scene as synth_scene
from videobert.shards.synthetic import speech as synth_speech
from videobert.trainer import cli

TINY = synth.SynthConfig(
    train_videos=3, heldout_videos=2, seed=3, size=64, fps=10, segments=(3, 4), segment_seconds=(2.0, 3.0),
)


def decode(path: Path, size: int) -> np.ndarray:
    """All frames of a video as (n, size, size, 3) uint8, decoded by ffmpeg."""
    from videobert.shards.ffmpeg_bin import ffmpeg_exe

    out, _ = (
        ffmpeg.input(str(path)).output("pipe:", format="rawvideo", pix_fmt="rgb24")
        .global_args("-loglevel", "error").run(cmd=ffmpeg_exe(), capture_stdout=True)
    )
    return np.frombuffer(out, np.uint8).reshape(-1, size, size, 3)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> synth.CorpusInfo:
    return synth.render_corpus(tmp_path_factory.mktemp("synth") / "a", TINY, workers=1, progress=False)


def read_json(path: Path):
    return json.loads(path.read_text("utf-8"))


METADATA = ["train/captions.json", "train/annotations.json", "heldout/captions.json",
            "heldout/annotations.json", "labels.jsonl", "vocabulary.json", "corpus.json"]


def test_same_seed_same_bytes_and_frames_whatever_the_workers(corpus, tmp_path):
    again = synth.render_corpus(tmp_path / "b", TINY, workers=2, progress=False)
    for name in METADATA:
        assert (corpus.out / name).read_bytes() == (again.out / name).read_bytes(), name
    for split in synth.SPLITS:
        for video_id in corpus.videos[split]:
            first = decode(corpus.video_path(split, video_id), TINY.size)
            second = decode(again.video_path(split, video_id), TINY.size)
            np.testing.assert_array_equal(first, second)
            # Single-threaded x264 and bit-exact muxing: even the files are the same.
            assert corpus.video_path(split, video_id).read_bytes() == again.video_path(split, video_id).read_bytes()


def test_another_seed_gives_another_corpus(corpus, tmp_path):
    other = synth.render_corpus(tmp_path / "c", synth.SynthConfig(**{**TINY.to_dict(), "seed": 4}), workers=1, progress=False)
    for name in ("train/captions.json", "labels.jsonl"):
        assert (corpus.out / name).read_bytes() != (other.out / name).read_bytes()
    first = decode(corpus.video_path("train", corpus.videos["train"][0]), TINY.size)
    second = decode(other.video_path("train", other.videos["train"][0]), TINY.size)
    assert first.shape != second.shape or np.abs(first.astype(int) - second).mean() > 5


def test_layout_splits_and_labels(corpus):
    for name in METADATA:
        assert (corpus.out / name).is_file(), name
    train, heldout = set(corpus.videos["train"]), set(corpus.videos["heldout"])
    assert len(train) == 3 and len(heldout) == 2 and not train & heldout
    for split in synth.SPLITS:
        on_disk = {p.stem for p in corpus.videos_dir(split).glob("*.mp4")}
        assert on_disk == set(corpus.videos[split])
        assert not list(corpus.videos_dir(split).glob("*.partial"))
    vocabulary = read_json(corpus.vocabulary)
    assert len(vocabulary["verbs"]) >= 6 and len(vocabulary["nouns"]) >= 8
    rows = [json.loads(line) for line in corpus.labels.read_text().splitlines()]
    assert sum(corpus.segments.values()) == len(rows)
    for row in rows:
        assert row["video"] in corpus.videos[row["split"]]
        assert row["verb"] in vocabulary["verbs"] and row["noun"] in vocabulary["nouns"]


def test_annotations_hold_the_true_segments_inside_each_video(corpus):
    rows = [json.loads(line) for line in corpus.labels.read_text().splitlines()]
    for split, subset in synth.SUBSETS.items():
        database = read_json(corpus.annotations(split))["database"]
        assert set(database) == set(corpus.videos[split])
        for video_id, entry in database.items():
            assert entry["subset"] == subset
            frames = decode(corpus.video_path(split, video_id), TINY.size)
            assert len(frames) == round(entry["duration"] * TINY.fps)
            previous_end = 0.0
            for i, a in enumerate(entry["annotations"]):
                start, end = a["segment"]
                assert a["id"] == i and start == pytest.approx(previous_end) and start < end <= entry["duration"]
                words = a["sentence"].split()
                assert len(words) >= 6 and a["verb"] in words and a["noun"] in words, a["sentence"]
                label = next(r for r in rows if r["video"] == video_id and r["segment"] == i)
                assert (label["start"], label["end"], label["verb"], label["noun"]) == (start, end, a["verb"], a["noun"])
                previous_end = end
            assert previous_end == pytest.approx(entry["duration"])


def test_captions_are_howto100m_form_with_asr_like_timing(corpus):
    boundaries = {}
    for split in synth.SPLITS:
        for video_id, entry in read_json(corpus.annotations(split))["database"].items():
            boundaries[video_id] = ({b for a in entry["annotations"] for b in a["segment"]}, entry["duration"])
    texts = []
    for split in synth.SPLITS:
        captions = read_json(corpus.captions(split))
        assert set(captions) == set(corpus.videos[split])
        for video_id, entry in captions.items():
            assert set(entry) == {"start", "end", "text"}
            assert len(entry["start"]) == len(entry["end"]) == len(entry["text"]) > 0
            edges, duration = boundaries[video_id]
            previous_end = 0.0
            for start, end, text in zip(entry["start"], entry["end"], entry["text"]):
                assert previous_end <= start < end <= duration
                assert start not in edges and end not in edges  # jittered, as ASR timing is
                assert text.strip() == text and text == text.lower() and text
                previous_end = end
            texts += entry["text"]
    fillers = set(synth_speech.FILLER) | set(synth_speech.INTRO) | set(synth_speech.OUTRO)
    assert any(t in fillers for t in texts)
    template = re.compile(synth_speech.TEMPLATE.format(verb=r"(\w+)", noun=r"(\w+)") + "$")
    assert any(template.match(t) for t in texts)


def test_transcripts_tie_words_to_what_is_shown_with_noise():
    # Plans and transcripts only (no rendering): enough videos for the statistics to mean something.
    plans = synth.plan_corpus(synth.SynthConfig(train_videos=60, heldout_videos=1, seed=11))
    named, matched, segments, spoken_about, templates = 0, 0, 0, 0, 0
    for plan in plans:
        sentences = synth.spoken(plan)
        segments += len(plan.segments)
        for seg in plan.segments:
            spoken_about += any(seg.action.verb in s.text.split() and _overlap(s, seg) > 1.0 for s in sentences)
        for s in sentences:
            verbs = [w for w in s.text.split() if w in synth_scene.VERBS]
            if not verbs:
                continue
            shown = max(plan.segments, key=lambda seg: _overlap(s, seg))
            named += 1
            matched += shown.action.verb == verbs[0]
            templates += s.text == synth_speech.TEMPLATE.format(verb=shown.action.verb, noun=shown.action.noun)
    # Most steps are spoken about while they happen; some speech runs ahead or is missing, as in real ASR.
    assert 0.9 < matched / named < 1.0
    assert 0.6 < spoken_about / segments < 0.95
    assert templates / segments > 0.15


def _overlap(sentence: synth_speech.Sentence, seg: synth.SegmentPlan) -> float:
    return max(0.0, min(sentence.end, seg.end) - max(sentence.start, seg.start))


def test_labels_are_single_wordpieces(minilm_dir):
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(minilm_dir)
    for word in [*synth_scene.VERBS, *synth_scene.NOUNS]:
        assert tokenizer.tokenize(word) == [word]


def test_videos_are_real_h264(corpus, ffmpeg):
    path = corpus.video_path("heldout", corpus.videos["heldout"][0])
    # No ffprobe here: ffmpeg describes its input on stderr when given no output.
    result = subprocess.run([ffmpeg, "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    assert re.search(r"Video: h264 .*yuv420p.*64x64", result.stderr), result.stderr
    assert f"{TINY.fps} fps" in result.stderr


def test_objects_never_reach_the_frame_border():
    # The built-in encoder estimates the background from the frame border.
    rng = np.random.default_rng(0)
    size, times = 64, np.arange(0, 4, 0.1)
    for i in range(48):
        verb, noun = list(synth_scene.VERBS)[i % 6], list(synth_scene.NOUNS)[i // 6]
        action = synth_scene.sample_action(rng, verb, noun)
        touched = synth_scene.object_coverage(action, times, size).max(axis=0) > 0
        ring = np.ones_like(touched)
        ring[2:-2, 2:-2] = False
        assert touched.any() and not (touched & ring).any(), (verb, noun)


def test_cli_renders_reuses_and_refuses_other_options(tmp_path, capsys):
    out = tmp_path / "corpus"
    args = ["synth", "--out", str(out), "--train-videos", "1", "--heldout-videos", "1", "--size", "32",
            "--fps", "5", "--segments", "1", "1", "--segment-seconds", "2", "2", "--workers", "1"]
    assert cli.main(["shards", *args]) == 0
    assert "rendered" in capsys.readouterr().out
    assert cli.main(["shards", *args]) == 0
    assert "reused" in capsys.readouterr().out
    assert cli.main(["shards", *args[:-2], "--seed", "5", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "seed 0 -> 5" in err and "--overwrite" in err
    assert cli.main(["shards", *args, "--seed", "5", "--overwrite"]) == 0
    assert read_json(out / "corpus.json")["config"]["seed"] == 5


def test_bad_options_are_named():
    with pytest.raises(synth.SynthError, match="--size 33") as info:
        synth.SynthConfig(size=33, segments=(4, 2))
    assert "--segments 4 2" in str(info.value)
