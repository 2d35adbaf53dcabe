"""Text-to-video and video-to-text parts: representative clips, iterative filling, word lists, pictures."""

from __future__ import annotations

import eval_corpus
import numpy as np
import pytest
import torch

from videobert.models.config import preset
from videobert.models.videobert import VideoBertForPreTraining
from videobert.models.visual.codebook import Codebook
from videobert.models.visual.encoder import build_encoder
from videobert.models.visual.tokenizer import VisualTokenizer
from videobert.models.vocab import JointVocab
from videobert.shards import reader
from videobert.trainer.evaluation import generate


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from videobert.models.hf_interop import load_text_tokenizer

    return load_text_tokenizer(minilm_dir)


@pytest.fixture(scope="module")
def clip_samples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    eval_corpus.write_shards(folder, eval_corpus.plan(3, 2, seed=1), 1)
    return list(reader.iter_samples(reader.resolve_shards(folder)))


@pytest.fixture(scope="module")
def visual(clip_samples):
    """A one-level codebook whose leaves are the features of chosen clips: leaf i = sample i's clip 1
    (the corpus draws every clip of a segment alike, and segments of one verb and noun alike)."""
    encoder = build_encoder("synthetic", fps=eval_corpus.FPS, clip_len=eval_corpus.CLIP_LEN,
                            frame_size=(eval_corpus.SIZE, eval_corpus.SIZE))
    features = torch.stack([encoder(torch.from_numpy(s.frames[1:2]))[0] for s in clip_samples[:4]])
    return VisualTokenizer(encoder, Codebook(spec=encoder.spec, centroids=[features[None]]))


def test_each_visual_word_is_shown_by_the_clip_nearest_its_centroid(clip_samples, visual):
    picks = generate.nearest_clips([2, 0, 2], clip_samples, visual)
    assert sorted(picks) == [0, 2]
    for leaf, pick in picks.items():
        # Clips that look alike tie; any of them is the leaf's clip.
        assert pick.key.split(" clip ")[0] in {s.key for s in clip_samples}
        assert pick.distance == pytest.approx(0.0, abs=1e-4)
        assert np.array_equal(pick.frames, clip_samples[leaf].frames[1])
    image = generate.text_to_video_grid(["stir it", "a longer sentence to wrap over lines"], [[0, 2], [2]], picks)
    assert image.size[0] > 2 * generate.FRAMES_PER_CLIP * generate.THUMB and image.size[1] > 2 * generate.THUMB


def test_fill_video_and_video_to_text(clip_samples, visual, tokenizer):
    torch.manual_seed(0)
    vocab = JointVocab.from_tokenizer(tokenizer, visual.num_leaves)
    model = VideoBertForPreTraining(preset("tiny", vocab)).eval()
    leaves = generate.fill_video(model, tokenizer, vocab, "now let me show you how to stir the tomato", 5)
    assert len(leaves) == 5 and all(0 <= v < visual.num_leaves for v in leaves)

    readings = generate.video_to_text(model, tokenizer, vocab, clip_samples[:2], visual, k=4)
    assert [r["key"] for r in readings] == [s.key for s in clip_samples[:2]]
    for r, sample in zip(readings, clip_samples):
        assert len(r["verb_words"]) == len(r["noun_words"]) == 4
        assert all(w.isalpha() and not w.startswith(("[", "##")) for w in r["verb_words"] + r["noun_words"])
        assert r["visual_words"] == visual(torch.from_numpy(sample.frames)).tolist()
    image = generate.video_to_text_grid(clip_samples[:2], readings)
    assert image.size[1] >= 2 * generate.THUMB


def test_read_clip_samples_caps_the_clips_and_refuses_token_shards(clip_samples, tmp_path):
    folder = tmp_path / "clips"
    eval_corpus.write_shards(folder, eval_corpus.plan(3, 2, seed=1), 1)
    urls = reader.resolve_shards(folder)
    capped = generate.read_clip_samples(urls, max_clips=7)
    assert sum(s.meta.n_clips for s in capped) <= 7 and len(capped) >= 2
    eval_corpus.write_shards(tmp_path / "tokens", eval_corpus.plan(1, 1, seed=1), 1, codebook_hash="x")
    with pytest.raises(ValueError, match="clip shards"):
        generate.read_clip_samples(reader.resolve_shards(tmp_path / "tokens"), max_clips=7)
