"""Text-video retrieval: ranks, recalls and chance on planted score matrices; the pair scores of a
real model; the ``eval`` job with its table and picture."""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

import eval_corpus
import numpy as np
import pytest
import tiny_videobert
import torch
from PIL import Image

from videobert.trainer import cli
from videobert.trainer.evaluation.retrieval import (
    aligned_probabilities, first_correct_ranks, pair_rows, retrieval_metrics, score_matrix,
)

pytestmark = pytest.mark.slow


def test_ranks_recalls_and_chance_on_a_planted_matrix():
    captions = ["stir it", "roll it", "cut it", "Cut  it"]  # the last two are the same caption
    scores = np.array([[0.9, 0.1, 0.2, 0.3],   # own video first: rank 1
                       [0.8, 0.5, 0.1, 0.2],   # own video second: rank 2
                       [0.1, 0.2, 0.3, 0.9],   # the other "cut it" video first: correct, rank 1
                       [0.7, 0.6, 0.5, 0.4]])  # its best correct (0.5) has two wrong ones above: rank 3
    r = retrieval_metrics(scores, captions)
    assert r["segments"] == 4 and r["distinct_captions"] == 3
    t2v, v2t = r["text_to_video"], r["video_to_text"]
    assert (t2v["r1"], t2v["r5"], t2v["median_rank"]) == (0.5, 1.0, 1.5)
    # Videos as queries (columns): ranks 1, 2 (0.6 above 0.5), 1, 1.
    assert (v2t["r1"], v2t["median_rank"]) == (0.75, 1.0)
    # Chance: one correct item of four, P(top 1) = 1/4; two correct, 1 - C(2,1)/C(4,1) = 1/2.
    assert t2v["r1_chance"] == pytest.approx((0.25 + 0.25 + 0.5 + 0.5) / 4)
    assert t2v["r5_chance"] == 1.0
    assert t2v["median_rank_chance"] == pytest.approx(np.median([5 / 2, 5 / 2, 5 / 3, 5 / 3]))
    # Intervals: a bootstrap over the four queries (ranks 1, 2, 1, 3), reproducible.
    assert t2v["r1_ci"][0] <= 0.5 <= t2v["r1_ci"][1] and t2v["r5_ci"] == [1.0, 1.0]
    assert 1 <= t2v["median_rank_ci"][0] <= 1.5 <= t2v["median_rank_ci"][1] <= 3
    assert retrieval_metrics(scores, captions) == r


def test_ties_count_against_the_query():
    ranks = first_correct_ranks(np.array([[0.5, 0.5, 0.5]]), np.array([[False, True, False]]))
    assert ranks.tolist() == [3]


def test_chance_equals_the_share_of_random_rankings_that_hit(tmp_path):
    rng = np.random.default_rng(0)
    captions = ["a", "a", "a", "b", "c", "d", "e", "f", "g", "h"]
    same = np.array([[x == y for y in captions] for x in captions])
    hits = np.mean([(first_correct_ranks(rng.random((10, 10)), same) <= 2).mean() for _ in range(4000)])
    counts = same.sum(axis=1)
    expected = np.mean([1 - comb(10 - c, 2) / comb(10, 2) for c in counts])
    assert retrieval_metrics(np.zeros((10, 10)), captions)["text_to_video"]["r5_chance"] == pytest.approx(
        np.mean([1 - comb(10 - c, 5) / comb(10, 5) for c in counts]))
    assert hits == pytest.approx(expected, abs=0.01)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return eval_corpus.write_corpus(tmp_path_factory.mktemp("retrieval-corpus"))


@pytest.fixture(scope="module")
def untrained(corpus, tmp_path_factory) -> Path:
    return tiny_videobert.exported_tiny(corpus, tmp_path_factory.mktemp("retrieval-model") / "export", steps=0, seed=3)


def test_every_pair_is_one_joint_sequence_whatever_the_batch(untrained):
    from videobert.trainer.evaluation.load import load_model

    loaded = load_model(untrained)
    captions = ["now stir the tomato", "roll the bread", "flip it over now please"]
    videos = [np.array([0, 4]), np.array([7, 7, 1]), np.array([12])]
    small = score_matrix(loaded.model, loaded.tokenizer, loaded.vocab, captions, videos, max_seq_len=32, batch_size=2)
    large = score_matrix(loaded.model, loaded.tokenizer, loaded.vocab, captions, videos, max_seq_len=32, batch_size=64)
    np.testing.assert_allclose(small, large, rtol=1e-5, atol=1e-6)
    for i, caption in enumerate(captions):
        for j, video in enumerate(videos):
            text = loaded.tokenizer(caption, add_special_tokens=False)["input_ids"]
            ids, types = pair_rows(loaded.vocab, text, video, 32)
            assert ids == loaded.vocab.joint_sequence(text, video)[0]
            alone = aligned_probabilities(loaded.model, loaded.vocab, [(ids, types)], torch.device("cpu"))[0]
            assert small[i, j] == pytest.approx(alone, rel=1e-5)


def test_masked_words_score_each_caption_by_its_own_verb_and_noun(corpus, untrained):
    from videobert.trainer.evaluation.labels import read_vocabulary
    from videobert.trainer.evaluation.load import load_model
    from videobert.trainer.evaluation.retrieval import masked_word_scores
    from videobert.trainer.evaluation.zeroshot import ZeroShotClassifier

    loaded = load_model(untrained)
    labels = read_vocabulary(corpus["vocabulary"])
    classifier = ZeroShotClassifier(loaded.model, loaded.tokenizer, loaded.vocab, labels, max_seq_len=32)
    captions = ["now stir the lemon slowly", "roll it", "welcome back to my kitchen"]
    videos = [np.array([0, 4]), np.array([2, 7, 7])]
    matrix = masked_word_scores(classifier, captions, videos, batch_size=1)
    scored = classifier.score(videos)
    verb, noun = labels.verbs.index, labels.nouns.index
    np.testing.assert_allclose(matrix[0], (scored["verb"][:, verb("stir")] + scored["noun"][:, noun("lemon")]).numpy(), rtol=1e-5)
    np.testing.assert_allclose(matrix[1], scored["verb"][:, verb("roll")].numpy(), rtol=1e-5)  # no noun: the verb alone
    assert np.isneginf(matrix[2]).all()  # names neither: ranks last


def test_the_eval_job_writes_the_table_and_the_picture(corpus, untrained, tmp_path):
    args = ["eval", str(untrained), "--out", str(tmp_path), "--retrieval", str(corpus["heldout"]), "--retrieval-segments",
            "12", "--clips", str(corpus["clips"]), "--codebook", str(corpus["codebook"]), "--heldout",
            "--vocabulary", str(corpus["vocabulary"])]
    assert cli.main(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    r = results["retrieval"]
    assert r["segments"] == 12 and r["distinct_captions"] <= 12
    for ranking in (r, r["masked_words"]):
        for direction in ("text_to_video", "video_to_text"):
            assert 0 <= ranking[direction]["r1"] <= ranking[direction]["r5"] <= ranking[direction]["r10"] <= 1
            assert 1 <= ranking[direction]["median_rank"] <= 12
    assert len(r["examples"]) == 4 and all(len(e["retrieved"]) == 4 for e in r["examples"])
    report = (tmp_path / "report.md").read_text()
    assert "## Text-video retrieval (zero-shot)" in report and "![retrieval](retrieval.png)" in report
    assert "| text to video, masked words |" in report
    with Image.open(tmp_path / "retrieval.png") as image:
        assert image.format == "PNG" and min(image.size) > 64
        image.verify()
