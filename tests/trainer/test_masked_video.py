"""Held-out video tokens masked one at a time: the rows, the tally on planted predictions, and the
pass over real shards (every visual token a target once, baselines computed from the shards)."""

from __future__ import annotations

import eval_corpus
import numpy as np
import pytest
import tiny_videobert
import torch

from videobert.models.vocab import JointVocab
from videobert.shards import reader
from videobert.trainer.evaluation.intervals import wilson
from videobert.trainer.evaluation.masked_video import InTurnTally, evaluate_in_turn, masked_rows, train_counts

pytestmark = pytest.mark.slow


def _vocab(num_visual: int = 4) -> JointVocab:
    return JointVocab(text_vocab_size=10, num_visual_tokens=num_visual, cls_id=1, sep_id=2, mask_id=3, pad_id=0, unk_id=4)


def test_each_video_position_is_masked_once_with_its_neighbour():
    v = _vocab()
    rows = masked_rows(v, [7, 8], np.array([2, 2, 3]), max_seq_len=32)
    video = [v.visual_offset + x for x in (2, 2, 3)]
    assert [r[2] for r in rows] == [4, 5, 6]  # [CLS] 7 8 [>] | video
    for (ids, types, at, target, neighbour), expected_neighbour in zip(rows, (2, 2, 2)):
        expected = [v.cls_id, 7, 8, v.video_sep_id, *video, v.sep_id]
        expected[at] = v.mask_id
        assert ids == expected and types == [0, 0, 0, 1, 1, 1, 1, 1]
        assert neighbour == expected_neighbour and target == (2, 2, 3)[at - 4]
    assert masked_rows(v, [7], np.array([1]), 32)[0][4] == -1  # a single clip has no neighbour


def test_the_tally_on_planted_predictions():
    v = _vocab()
    logits = torch.full((2, v.size_padded), -30.0)
    logits[0, v.visual_offset + 1] = 0.0       # target 1: all mass on it
    logits[1, v.visual_offset + 0] = np.log(3)  # target 2: visual words 0, 2 share 3 : 1 ...
    logits[1, v.visual_offset + 2] = 0.0
    logits[1, 5] = np.log(4)                    # ... and a text word takes 4 / 8 of the whole vocabulary
    tally = InTurnTally(v, np.array([1.0, 1.0, 2.0, 4.0]))
    tally.add(logits, np.array([1, 2]), np.array([1, 0]))
    r = tally.reduce()
    assert r["targets"] == 2 and r["accuracy"] == 0.5 and r["accuracy_all_words"] == 0.5
    assert r["perplexity"] == pytest.approx(np.exp(-(np.log(1.0) + np.log(1 / 4)) / 2), rel=1e-4)
    assert r["perplexity_all_words"] == pytest.approx(np.exp(-(np.log(1.0) + np.log(1 / 8)) / 2), rel=1e-4)
    assert r["train_unigram_perplexity"] == pytest.approx(np.exp(-(np.log(1 / 8) + np.log(2 / 8)) / 2))
    assert r["train_unigram_accuracy"] == 0.0  # its best word, 3, is neither target
    assert r["oracle_unigram_perplexity"] == pytest.approx(2.0) and r["neighbour_accuracy"] == 0.5
    # Where the neighbour's word differs (the second target only): the model misses it too.
    assert r["neighbour_differs_targets"] == 1 and r["neighbour_differs_accuracy"] == 0.0
    assert r["neighbour_differs_neighbour_accuracy"] == 0.0 and r["neighbour_differs_train_unigram_accuracy"] == 0.0
    # Wilson intervals over the targets counted: 1 of 2, 0 of 1.
    assert r["accuracy_ci"] == pytest.approx(list(wilson(1, 2))) and r["neighbour_accuracy_ci"] == r["accuracy_ci"]
    assert r["neighbour_differs_accuracy_ci"] == pytest.approx(list(wilson(0, 1)))
    assert "perplexity_ci" not in r


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return eval_corpus.write_corpus(tmp_path_factory.mktemp("masked-video-corpus"))


def test_the_pass_over_held_out_shards(corpus, tmp_path):
    from videobert.trainer.evaluation.load import load_model

    loaded = load_model(tiny_videobert.exported_tiny(corpus, tmp_path / "export", steps=0))
    urls = reader.resolve_shards([str(corpus["heldout"])])
    counts = train_counts(reader.resolve_shards([str(corpus["train"])]), loaded.vocab.num_visual_tokens)
    samples = list(reader.iter_samples(urls))
    r = evaluate_in_turn(loaded.model, loaded.tokenizer, urls, counts, max_seq_len=32, batch_size=7)
    assert r["targets"] == sum(len(s.tokens) for s in samples)
    assert r["perplexity_all_words"] >= r["perplexity"] and 0 <= r["accuracy"] <= 1
    tokens = [np.asarray(s.tokens) for s in samples]
    neighbour_hits = sum(int(t[k] == (t[k - 1] if k else t[1])) for t in tokens for k in range(len(t)))
    assert r["neighbour_accuracy"] == pytest.approx(neighbour_hits / r["targets"])
    assert r["neighbour_differs_targets"] == r["targets"] - neighbour_hits
    p = (counts + 1) / (counts + 1).sum()
    assert r["train_unigram_perplexity"] == pytest.approx(np.exp(-np.mean([np.log(p[x]) for t in tokens for x in t])))
    assert counts.sum() == sum(len(s.tokens) for s in reader.iter_samples(reader.resolve_shards([str(corpus["train"])])))
