"""95 % intervals: Wilson against hand-computed values, the bootstrap (seeded, bracketing, narrowing),
its fast AUC, balanced accuracy and BLEU forms against plain recomputation on the same resamples, the
result dicts' ``_ci`` keys, and the tables that print them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videobert.models.vocab import JointVocab
from videobert.trainer.evaluation import intervals
from videobert.trainer.evaluation.heldout import Tally, roc_auc
from videobert.trainer.evaluation.tables import (
    caption_table, format_caption_tables, format_table, heldout_table, in_turn_table, markdown_table, probe_table,
    retrieval_table, zeroshot_table,
)


def test_wilson_against_hand_computed_values():
    # 8/10, z = 1.96: z^2 = 3.8416, 1 + z^2/n = 1.38416; centre (0.8 + 0.19208) / 1.38416 = 0.716738;
    # half-width 1.96 / 1.38416 * sqrt(0.8 * 0.2 / 10 + 3.8416 / 400) = 1.416022 * 0.160012 = 0.226581.
    assert intervals.wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=5e-5)
    # 0/10: centre 0.19208 / 1.38416 = 0.138770 and half-width 1.416022 * sqrt(0.009604) = 0.138770.
    assert intervals.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)
    # 10/10 mirrors 0/10.
    assert intervals.wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=5e-5)
    # 50/100: centre 0.5, half-width 1.96 / 1.038416 * sqrt(0.0025 + 3.8416 / 40000) = 0.096170.
    assert intervals.wilson(50, 100) == pytest.approx((0.4038, 0.5962), abs=5e-5)
    assert intervals.wilson(0, 0) == (0.0, 1.0)  # no targets: no information


def test_bootstrap_is_seeded_brackets_its_estimate_and_narrows_with_more_units():
    rng = np.random.default_rng(7)
    small, large = rng.normal(1.0, 1.0, 40), rng.normal(1.0, 1.0, 4000)
    mean = lambda batch: batch.mean(axis=1)
    first = intervals.bootstrap(mean, small)
    assert first == intervals.bootstrap(mean, small) == intervals.bootstrap_mean(small)
    assert first != intervals.bootstrap(mean, small, seed=1)
    assert first[0] < small.mean() < first[1]
    wide, narrow = first[1] - first[0], np.subtract(*intervals.bootstrap_mean(large)[::-1])
    assert narrow < wide / 5  # about sqrt(100) = 10 times narrower
    # A statistic taking one resample at a time sees the same resamples.
    assert intervals.bootstrap(lambda one: one.mean(), small, vectorised=False) == pytest.approx(first)
    assert intervals.bootstrap(mean, []) is None
    # Chunked draws are the same draws.
    whole = intervals.resample_indices(50, 300, seed=3)
    assert whole.shape == (300, 50)
    counts = np.concatenate(list(intervals.resample_counts(50, 300, seed=3)))
    assert (counts == np.stack([np.bincount(row, minlength=50) for row in whole])).all()


def _naive(statistic, n: int, n_resamples: int = 200) -> tuple[float, float]:
    values = np.array([statistic(idx) for idx in intervals.resample_indices(n, n_resamples)], np.float64)
    return intervals.percentile_interval(values)


def test_auc_and_balanced_accuracy_intervals_recompute_each_resample():
    rng = np.random.default_rng(0)
    positive = rng.random(60) < 0.5
    scores = np.round(rng.random(60) + 0.4 * positive, 1)  # ties on purpose
    fast = intervals.auc_interval(scores, positive, n_resamples=200)
    assert fast == pytest.approx(_naive(lambda i: roc_auc(scores[i], positive[i]) or np.nan, 60))
    assert fast[0] < roc_auc(scores, positive) < fast[1]
    predicted = scores > 0.6
    balanced = intervals.balanced_accuracy(predicted, positive)
    recall = (predicted[positive].mean() + (~predicted[~positive]).mean()) / 2
    assert balanced == pytest.approx(recall)
    fast = intervals.balanced_accuracy_interval(predicted, positive, n_resamples=200)
    assert fast == pytest.approx(_naive(lambda i: intervals.balanced_accuracy(predicted[i], positive[i]) or np.nan, 60))
    # Known cases: perfectly separated scores stay at 1 in every resample; one class alone has none.
    assert intervals.auc_interval([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == (1.0, 1.0)
    assert intervals.auc_interval([0.1, 0.2], [1, 1]) is None


def test_recall_and_median_rank_intervals_over_queries():
    ranks = np.array([1, 1, 2, 3, 1, 7, 1, 2, 1, 12])
    low, high = intervals.recall_interval(ranks, 1)
    assert low <= np.mean(ranks <= 1) <= high and 0 <= low and high <= 1
    assert intervals.median_interval(ranks)[0] <= np.median(ranks) <= intervals.median_interval(ranks)[1]


def test_corpus_bleu_from_segment_statistics_is_the_coco_score():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu

    from videobert.trainer.evaluation.captioning.metrics import bleu_statistics

    gts = {"a": ["stir the soup in the pot"], "b": ["cut the onion into rings"], "c": ["add salt", "add some salt"],
           "d": ["pour the oil into the pan"]}
    res = {"a": ["stir the soup"], "b": ["cut the onion into small rings"], "c": ["add salt now"], "d": ["pour oil in the pan"]}
    stats = bleu_statistics(gts, res)
    score, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n in (1, 2, 3, 4):
        assert intervals.bleu_from_stats(stats.sum(axis=0), n) == pytest.approx(score[n - 1], rel=1e-9)
    low, high = intervals.corpus_bleu_interval(stats, 3)
    assert low <= score[2] <= high


def _vocab() -> JointVocab:
    return JointVocab(text_vocab_size=10, num_visual_tokens=4, cls_id=1, sep_id=2, mask_id=3, pad_id=0, unk_id=4)


def test_the_held_out_tally_gives_intervals_and_balanced_accuracy():
    tally = Tally(_vocab())
    tally.sums["alignment"] += (8, 10, 5.0)
    tally.sums["text_mlm"] += (3, 12, 24.0)
    # P(aligned) and the truth of ten examples; decided aligned at argmax (P >= 0.5).
    tally.aligned_prob = [0.9, 0.8, 0.7, 0.6, 0.4, 0.45, 0.3, 0.2, 0.1, 0.55]
    tally.aligned = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    tally.decided_aligned = [int(p >= 0.5) for p in tally.aligned_prob]
    r = tally.reduce()
    assert r["alignment_acc"] == 0.8 and r["alignment_acc_ci"] == pytest.approx([0.4902, 0.9433], abs=5e-5)
    assert r["text_mlm_acc_ci"] == pytest.approx(list(intervals.wilson(3, 12)))
    assert "text_mlm_perplexity_ci" not in r  # loss totals only: no interval
    # Recall on aligned 4/5, on misaligned 4/5.
    assert r["alignment_balanced_acc"] == pytest.approx(0.8) and r["alignment_balanced_acc_chance"] == 0.5
    low, high = r["alignment_balanced_acc_ci"]
    assert low <= 0.8 <= high
    assert r["alignment_auc_ci"][0] <= r["alignment_auc"] <= r["alignment_auc_ci"][1]
    assert Tally(_vocab()).reduce().get("alignment_auc_ci") is None  # nothing scored


def test_the_tally_records_the_argmax_decision():
    tally = Tally(_vocab())
    counts = {f"{n}_{part}": torch.tensor(0.0)
              for n in ("text_mlm", "video_mlm", "alignment") for part in ("count", "correct", "loss")}
    out = counts | {"alignment_logits": torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])}
    inputs = {"mlm_labels": torch.full((3, 4), -100), "alignment_labels": torch.tensor([0, 1, -100])}
    tally.add(out, inputs)
    assert tally.decided_aligned == [1, 0] and tally.aligned == [1, 0]


def test_tables_print_value_and_interval_in_its_own_format():
    held = {"alignment_acc": 0.8, "alignment_acc_ci": [0.4902, 0.9433], "alignment_chance": 0.5, "alignment_count": 10.0,
            "text_mlm_perplexity": 12.5, "text_mlm_perplexity_chance": 30.0, "text_mlm_count": 12.0}
    table = heldout_table(held)
    text = format_table(table)
    assert "0.800 [0.490, 0.943]" in text and "12.500 " in text and "12.500 [" not in text
    assert "95 % intervals" in text and "perplexities have none" in text
    assert any("0.800 [0.490, 0.943]" in line for line in markdown_table(table))

    zero = {"segments": 10.0}
    for prefix in ("chance", "constant", "language_prior", "cross_modal"):
        for slot in ("verb", "noun"):
            for k in (1, 5):
                zero[f"{prefix}_{slot}_top{k}"] = 0.8
                if prefix != "chance":
                    zero[f"{prefix}_{slot}_top{k}_ci"] = list(intervals.wilson(8, 10))
    text = format_table(zeroshot_table(zero))
    assert "80.0 % [49.0, 94.3]" in text and "10 labelled held-out segments" in text
    assert text.splitlines()[2].count("[") == 0  # the chance row is exact

    turn = {"targets": 20.0, "accuracy": 0.5, "accuracy_ci": [0.3, 0.7], "perplexity": 3.0, "accuracy_all_words": 0.5,
            "perplexity_all_words": 3.5, "train_unigram_accuracy": 0.1, "train_unigram_perplexity": 4.0,
            "oracle_unigram_accuracy": 0.2, "oracle_unigram_perplexity": 3.9, "neighbour_accuracy": 0.4,
            "neighbour_differs_targets": 12.0, "neighbour_differs_accuracy": 0.25, "neighbour_differs_accuracy_ci": [0.1, 0.5],
            "neighbour_differs_train_unigram_accuracy": 0.0, "neighbour_differs_neighbour_accuracy": 0.0}
    text = format_table(in_turn_table(turn))
    assert "0.500 [0.300, 0.700]" in text and "0.250 [0.100, 0.500]" in text
    assert "20 held-out visual tokens" in text and "the 12 whose neighbouring clip's word differs" in text

    row = {"r1": 0.5, "r1_ci": [0.25, 0.75], "r5": 1.0, "r10": 1.0, "r1_chance": 0.1, "r5_chance": 0.5, "r10_chance": 1.0,
           "median_rank": 1.5, "median_rank_ci": [1.0, 3.0], "median_rank_chance": 2.5}
    text = format_table(retrieval_table({"segments": 4, "distinct_captions": 3, "text_to_video": row, "video_to_text": row}))
    assert "50.0 % [25.0, 75.0] (10.0 %)" in text and "1.5 [1.0, 3.0] (2.5)" in text and "4 held-out segments" in text

    scores = {"bleu3": 0.1234, "bleu3_ci": [0.1, 0.15], "bleu4": 0.05, "meteor": None, "rouge_l": 0.3, "cider": 0.47,
              "cider_ci": [0.2, 0.71], "segments": 9, "tokenizer": "plain"}
    text = format_table(caption_table({"rows": {"videobert": scores}, "row_labels": {"videobert": "VideoBERT"},
                                       "heldout_segments": 9, "distinct_references": 9, "decoding": "greedy"}))
    assert "12.34 [10.00, 15.00]" in text and "0.470 [0.200, 0.710]" in text and "needs Java" in text

    text = format_table(probe_table({"videobert": {"verb": 0.8, "noun": 0.5, "verb_ci": list(intervals.wilson(8, 10))}}, 10))
    assert "80.0 % [49.0, 94.3]" in text and "10 labelled held-out segments" in text


def _captioning(verdict: str, encoder_probe: tuple[float, float, float], captioners: int = 3) -> dict:
    scores = {"bleu3": 0.3, "bleu4": 0.2, "meteor": None, "rouge_l": 0.5, "cider": 2.0, "cider_ci": [1.5, 2.5],
              "segments": 60, "tokenizer": "plain", "captioners": captioners,
              "cider_by_captioner": [1.8, 2.0, 2.2][:captioners]}
    value, low, high = encoder_probe
    return {"rows": {"encoder": scores, "videobert_encoder": scores}, "captioners": captioners,
            "row_labels": {"encoder": "encoder", "videobert_encoder": "VideoBERT + encoder"}, "heldout_segments": 60,
            "distinct_references": 60, "decoding": "greedy",
            "order": [{"better": "videobert_encoder", "than": "encoder", "metric": "cider", "difference": 0.1,
                       "difference_ci": [-0.3, 0.5], "verdict": verdict, "captioners": [captioners, captioners],
                       "difference_by_captioner": [0.4, -0.2, 0.1][:captioners]}],
            "probes": {"accuracy": {"encoder": {"verb": value, "noun": value, "verb_ci": [low, high],
                                                "noun_ci": [low, high]}}, "heldout_segments": 60}}


def test_the_captioning_order_says_what_its_interval_covers_and_when_the_encoder_leaves_nothing_to_add():
    text = format_caption_tables(_captioning("unresolved", (1.0, 0.94, 1.0)))
    assert "CIDEr by captioner" in text and "1.80 / 2.00 / 2.20" in text
    assert "over each row's 3 captioners: it covers another training of the captioners" in text
    assert "(captioner by captioner: +0.40, -0.20, +0.10): not resolved" in text
    assert "clip encoder's own features name the verb and the noun of 100 % and 100 %" in text
    # Only where the encoder's probes leave no doubt, and only when the order is not shown to hold.
    assert "own features name" not in format_caption_tables(_captioning("unresolved", (0.9, 0.8, 0.96)))
    assert "own features name" not in format_caption_tables(_captioning("holds", (1.0, 0.94, 1.0)))
    one = format_caption_tables(_captioning("unresolved", (1.0, 0.94, 1.0), captioners=1))
    assert "CIDEr by captioner" not in one and "captioner by captioner" not in one
    assert "one captioner per row, so another training of the captioners can move a row by more" in one


def test_wilson_reaches_the_ends_exactly():
    """All right (or all wrong) over many targets: the bound is 1 (or 0) to the bit, so that an
    accuracy of 1.0 lies inside its own interval."""
    from videobert.trainer.evaluation.intervals import wilson

    for count in (1, 7, 145, 10_000):
        assert wilson(count, count)[1] == 1.0 and wilson(0, count)[0] == 0.0
