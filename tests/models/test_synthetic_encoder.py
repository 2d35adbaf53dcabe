"""The built-in clip encoder: spec, shapes, determinism, and that it sees verbs and nouns in the pixels.

The informativeness tests render a small synthetic corpus, decode it with ffmpeg at the demo's
setting (10 fps, 64x64, clips of 15 frames), cut clips inside the labelled segments and fit simple
classifiers on the training videos' features; they are scored on held-out videos.
"""

from __future__ import annotations

import json
from pathlib import Path

import ffmpeg
import numpy as np
import pytest
import torch

from videobert.models.visual import encoder as encoder_module
from videobert.models.visual.synthetic import FEATURE_BLOCKS, FEATURE_DIM, SyntheticEncoder
from videobert.shards.synthetic import corpus as synth

CORPUS = synth.SynthConfig(train_videos=10, heldout_videos=6, seed=21, segments=(4, 5), segment_seconds=(3.0, 4.0))


def decode(path: Path, fps: float, size: int) -> np.ndarray:
    """Frames (n, size, size, 3) uint8 at ``fps``, decoded by ffmpeg as the prepare stage does."""
    from videobert.shards.ffmpeg_bin import ffmpeg_exe

    out, _ = (
        ffmpeg.input(str(path)).filter("fps", fps=fps).filter("scale", size, size)
        .output("pipe:", format="rawvideo", pix_fmt="rgb24")
        .global_args("-loglevel", "error").run(cmd=ffmpeg_exe(), capture_stdout=True)
    )
    return np.frombuffer(out, np.uint8).reshape(-1, size, size, 3)


def labelled_clips(info: synth.CorpusInfo, split: str, fps: float, size: int, clip_len: int):
    """Whole clips inside each labelled segment: (clips (N, T, S, S, 3), verbs (N,), nouns (N,))."""
    database = json.loads(info.annotations(split).read_text())["database"]
    clips, verbs, nouns = [], [], []
    for video_id, entry in database.items():
        frames = decode(info.video_path(split, video_id), fps, size)
        for a in entry["annotations"]:
            first = int(np.ceil(a["segment"][0] * fps - 1e-9))  # frames k with start <= k / fps < end
            stop = min(int(np.ceil(a["segment"][1] * fps - 1e-9)), len(frames))
            for k in range(first, stop - clip_len + 1, clip_len):
                clips.append(frames[k:k + clip_len])
                verbs.append(a["verb"])
                nouns.append(a["noun"])
    return torch.from_numpy(np.stack(clips)), np.array(verbs), np.array(nouns)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> synth.CorpusInfo:
    return synth.render_corpus(tmp_path_factory.mktemp("synth"), CORPUS, workers=2, progress=False)


@pytest.fixture(scope="module")
def demo_clips(corpus):
    return {split: labelled_clips(corpus, split, 10.0, 64, 15) for split in synth.SPLITS}


def nearest_class_mean(train_x, train_y, test_x) -> np.ndarray:
    classes = np.unique(train_y)
    means = np.stack([train_x[train_y == c].mean(axis=0) for c in classes])
    return classes[((test_x[:, None] - means[None]) ** 2).sum(-1).argmin(axis=1)]


def probe(encoder: SyntheticEncoder, clips: dict) -> dict[str, float]:
    """Held-out accuracy of nearest class mean (on the encoder's own scaling) and logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    (train, train_verb, train_noun), (test, test_verb, test_noun) = clips["train"], clips["heldout"]
    x_train, x_test = encoder(train).numpy(), encoder(test).numpy()
    scores = {}
    for name, y_train, y_test in (("verb", train_verb, test_verb), ("noun", train_noun, test_noun)):
        scores[f"{name} ncm"] = float((nearest_class_mean(x_train, y_train, x_test) == y_test).mean())
        logistic = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_train, y_train)
        scores[f"{name} logistic"] = float(logistic.score(x_test, y_test))
    return scores


def test_default_spec_is_the_demo_setting():
    encoder = SyntheticEncoder()
    assert encoder.spec.to_dict() == {
        "name": "synthetic", "fps": 10.0, "clip_len": 15, "frame_size": [64, 64], "feature_dim": FEATURE_DIM,
    }
    assert encoder_module.ENCODERS["synthetic"] is SyntheticEncoder
    blocks = sorted((b.start, b.stop) for b in FEATURE_BLOCKS.values())
    assert blocks[0][0] == 0 and blocks[-1][1] == FEATURE_DIM
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))


def test_shapes_determinism_and_wrong_input(demo_clips):
    clips = demo_clips["heldout"][0][:9]
    encoder = SyntheticEncoder()
    features = encoder(clips)
    assert features.shape == (9, FEATURE_DIM) and features.dtype == torch.float32
    assert torch.isfinite(features).all()
    assert torch.equal(features, encoder(clips))
    assert torch.allclose(encoder(clips[:1]), features[:1], atol=1e-5)  # no batch effects
    assert encoder(clips[:0]).shape == (0, FEATURE_DIM)
    with pytest.raises(ValueError, match="frame size"):
        encoder(clips[:, :, :32, :32])
    with pytest.raises(ValueError, match="clip length"):
        encoder(clips[:, :10])
    with pytest.raises(ValueError, match="uint8"):
        encoder(clips.float())


def test_verbs_and_nouns_are_predictable_on_heldout_videos(demo_clips):
    scores = probe(SyntheticEncoder(), demo_clips)
    print("held-out probe accuracy:", scores, {s: len(c[0]) for s, c in demo_clips.items()})
    # Chance is 1/6 for verbs and 1/8 for nouns.
    assert scores["verb ncm"] > 0.8 and scores["verb logistic"] > 0.8, scores
    assert scores["noun ncm"] > 0.8 and scores["noun logistic"] > 0.8, scores


def test_features_come_from_the_pixels(demo_clips):
    encoder = SyntheticEncoder()
    clips = demo_clips["heldout"][0][:16]
    features = encoder(clips)
    colour, shape, motion = (FEATURE_BLOCKS[k] for k in ("colour", "shape", "motion"))

    # Shuffled frames: same pixels, other order. Colour and shape are order-free, motion is not.
    shuffled = encoder(clips[:, torch.randperm(clips.shape[1], generator=torch.Generator().manual_seed(0))])
    torch.testing.assert_close(shuffled[:, colour], features[:, colour], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(shuffled[:, shape], features[:, shape], atol=1e-4, rtol=1e-4)
    assert (shuffled[:, motion] - features[:, motion]).norm(dim=1).min() > 0.05

    # Red and blue swapped everywhere: the object's colour changes, its mask (hence shape and motion) does not.
    swapped = encoder(clips.flip(-1))
    torch.testing.assert_close(swapped[:, shape], features[:, shape], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(swapped[:, motion], features[:, motion], atol=1e-4, rtol=1e-4)
    assert (swapped[:, colour] - features[:, colour]).norm(dim=1).min() > 0.1

    # A blank clip (only a backdrop) looks like none of them.
    blank = encoder(torch.full((1, *clips.shape[1:]), 90, dtype=torch.uint8))
    assert torch.isfinite(blank).all()
    assert (features - blank).norm(dim=1).min() > 0.5


def test_other_setting_works_and_still_sees_verbs_and_nouns(corpus):
    # The paper's clip length (30 frames at 20 fps) on 96x96 frames.
    encoder = SyntheticEncoder(fps=20, clip_len=30, frame_size=(96, 96))
    assert encoder.spec.frame_size == (96, 96) and encoder.spec.clip_len == 30
    clips = {split: labelled_clips(corpus, split, 20.0, 96, 30) for split in synth.SPLITS}
    scores = probe(encoder, clips)
    print("held-out probe accuracy at 20 fps, 30 frames, 96x96:", scores)
    assert scores["verb logistic"] > 0.7 and scores["noun logistic"] > 0.7, scores


def test_paper_frame_size_runs_in_bounded_batches():
    encoder = SyntheticEncoder(fps=20, clip_len=30, frame_size=(224, 224))
    assert encoder.chunk >= 1
    clips = torch.zeros((2, 30, 224, 224, 3), dtype=torch.uint8)
    clips[:, :, 90:130, 80:140] = torch.tensor([200, 40, 30], dtype=torch.uint8)
    features = encoder(clips)
    assert features.shape == (2, FEATURE_DIM) and torch.isfinite(features).all()
