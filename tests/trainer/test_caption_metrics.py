"""Captioning metrics against values worked out by hand on tiny reference sets.

BLEU (COCO's): clipped n-gram matches over n-grams, pooled over the set (micro), the brevity
penalty from the summed closest reference lengths. ROUGE-L: the LCS F-measure with beta = 1.2,
averaged over segments. CIDEr-D: tf-idf n-gram vectors (idf = log(segments / df)), clipped cosine
per n averaged over n = 1..4, a Gaussian length penalty on the bigram counts, times 10. METEOR 1.5
(English): for a hypothesis made of exactly the reference's words, Fmean = 1 and the score is
1 - 0.6 (chunks / matches) ** 0.2, with no penalty when one chunk covers the whole sentence.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from videobert.trainer.evaluation import intervals
from videobert.trainer.evaluation.captioning.metrics import (
    CaptionScorer, combine_captioners, format_score, java_available, paired_difference,
)

needs_java = pytest.mark.skipif(not java_available(), reason="METEOR and the PTB tokenizer need a Java runtime")


JAVA = [False] + ([True] if java_available() else [])


@pytest.fixture(scope="module")
def scorers():
    """One scorer per tokenization, shared: METEOR's Java process loads its tables once."""
    made = {java: CaptionScorer(use_java=java) for java in JAVA}
    yield made
    for scorer in made.values():
        scorer.close()


@pytest.mark.parametrize("java", JAVA)
def test_bleu_is_pooled_over_the_set_with_its_brevity_penalty(scorers, java):
    references = {"a": ["the cat sat on a mat"], "b": ["a dog runs fast"]}
    candidates = {"a": "the cat sat on the mat", "b": "a dog runs"}
    # Segment a: 1-grams 5/6 (one "the" is clipped), 2-grams 3/5, 3-grams 2/4, 4-grams 1/3.
    # Segment b: 3/3, 2/2, 1/1, 0/0. Pooled: 8/9, 5/7, 3/5, 1/3; lengths 9 against 10.
    brevity = math.exp(1 - 10 / 9)
    scores = scorers[java].score(references, candidates)
    assert scores.bleu3 == pytest.approx(brevity * (8 / 9 * 5 / 7 * 3 / 5) ** (1 / 3), rel=1e-6)
    assert scores.bleu4 == pytest.approx(brevity * (8 / 9 * 5 / 7 * 3 / 5 * 1 / 3) ** (1 / 4), rel=1e-6)
    assert scores.segments == 2


@pytest.mark.parametrize("java", JAVA)
def test_rouge_l_is_the_lcs_f_measure(scorers, java):
    # LCS of "the cat sat on the mat" and "the cat is on the mat today": "the cat on the mat", 5 words.
    p, r, beta2 = 5 / 6, 5 / 7, 1.2**2
    scores = scorers[java].score({"a": ["the cat is on the mat today"]}, {"a": "the cat sat on the mat"})
    assert scores.rouge_l == pytest.approx((1 + beta2) * p * r / (r + beta2 * p), rel=1e-9)


@pytest.mark.parametrize("java", JAVA)
def test_cider_d_on_two_segments_with_disjoint_words(scorers, java):
    # Every reference n-gram occurs in one of the two segments: idf = log 2 for all (unseen ones too).
    # Segment a is captioned exactly: 1 for every n. Segment b shares "e", "f" and "e f": cosines
    # 2/4 (unigrams), 1/3 (bigrams), 0, 0; both have 3 bigrams, so no length penalty.
    scores = scorers[java].score({"a": ["a b c d"], "b": ["e f g h"]}, {"a": "a b c d", "b": "e f x y"})
    assert scores.cider == pytest.approx((10 * 1 + 10 * (1 / 2 + 1 / 3) / 4) / 2, rel=1e-9)


@needs_java
def test_meteor_penalises_fragmentation_as_meteor_1_5_states(scorers):
    pairs = {"same": ("the cat sat on the mat", "the cat sat on the mat"),
             "two chunks of six": ("the cat sat on the mat", "on the mat the cat sat"),
             "two chunks of eight": ("one two three four five six seven eight", "five six seven eight one two three four"),
             "nothing shared": ("the cat sat on the mat", "green ideas sleep furiously")}
    # Already PTB tokens (lower case, no punctuation): scored without launching the tokenizer again.
    scores = {name: scorers[True].score_tokenized({"a": [ref]}, {"a": [hyp]}).meteor for name, (ref, hyp) in pairs.items()}
    assert scores["same"] == pytest.approx(1.0)
    assert scores["two chunks of six"] == pytest.approx(1 - 0.6 * (2 / 6) ** 0.2, abs=1e-4)
    assert scores["two chunks of eight"] == pytest.approx(1 - 0.6 * (2 / 8) ** 0.2, abs=1e-4)
    assert scores["nothing shared"] == 0.0


@pytest.mark.parametrize("java", JAVA)
def test_both_tokenizations_lower_case_and_drop_punctuation(scorers, java):
    scorer = scorers[java]
    tokens = scorer.tokenize({"a": ["Stir the Tomato, slowly."]})
    assert tokens == {"a": ["stir the tomato slowly"]}
    # Case and punctuation do not change a score.
    assert scorer.score({"a": ["stir the tomato slowly"]}, {"a": "Stir the Tomato, slowly."}).bleu4 == pytest.approx(1.0)


def test_without_java_meteor_is_absent_and_the_table_says_so():
    with CaptionScorer(use_java=False) as scorer:
        scores = scorer.score({"a": ["stir the tomato"]}, {"a": "stir the tomato"})
    assert scores.meteor is None and "no Java" in scores.tokenizer
    assert format_score("meteor", scores.meteor) == "needs Java"
    assert format_score("bleu4", 0.1234) == "12.34" and format_score("cider", 0.47) == "0.470"


def test_references_and_candidates_must_name_the_same_segments():
    with pytest.raises(ValueError, match="different segments"):
        CaptionScorer(use_java=False).score({"a": ["x y"]}, {"b": "x y"})


def test_table_3s_order_is_a_paired_difference_with_its_interval(scorers):
    words = ["stir the soup", "cut the onion", "pour the milk", "whisk the egg", "slice the bread"]
    references = {f"s{i:02d}": [words[i % 5]] for i in range(40)}
    exact = {k: refs[0] for k, refs in references.items()}
    # Wrong on 10 of 40 segments; on 2 of 8 segments in the small set.
    wrong_often = {k: ("pour the milk" if int(k[1:]) % 4 == 0 and words[int(k[1:]) % 5] != "pour the milk"
                       else exact[k]) for k in references}
    scored = scorers[False].score_sets(references, {"exact": exact, "wrong": wrong_often})
    found = paired_difference(scored["exact"], scored["wrong"])
    # The difference is that of the two corpus CIDEr figures (each a mean over the same segments), and its
    # interval is the bootstrap of the per-segment differences.
    assert found["difference"] == pytest.approx(scored["exact"].cider - scored["wrong"].cider, rel=1e-9)
    per_segment = scored["exact"].per_segment["cider"][0] - scored["wrong"].per_segment["cider"][0]
    assert found["difference_ci"] == pytest.approx(list(intervals.bootstrap_mean(per_segment)), rel=1e-12)
    assert found["captioners"] == [1, 1] and found["difference_by_captioner"] == [pytest.approx(found["difference"])]
    assert found["verdict"] == "holds" and found["difference_ci"][0] > 0
    assert paired_difference(scored["wrong"], scored["exact"])["verdict"] == "reversed"
    same = paired_difference(scored["exact"], scored["exact"])
    assert same["difference"] == 0 and same["difference_ci"] == [0.0, 0.0] and same["verdict"] == "unresolved"

    # The same kind of gap over 8 segments, 2 of them wrong: a resample draws neither about (6/8)^8 = 10 %
    # of the time, so the interval reaches 0 and the order is not resolved though the difference is positive.
    few = {k: references[k] for k in list(references)[:8]}
    small = scorers[False].score_sets(few, {"exact": {k: exact[k] for k in few},
                                            "wrong": {k: wrong_often[k] for k in few}})
    unsure = paired_difference(small["exact"], small["wrong"])
    assert unsure["difference"] > 0 and unsure["difference_ci"][0] <= 0 and unsure["verdict"] == "unresolved"


def test_a_row_of_several_captioners_is_their_mean_with_intervals_over_captioners_and_segments(scorers):
    words = ["stir the soup", "cut the onion", "pour the milk", "whisk the egg", "slice the bread"]
    references = {f"s{i:02d}": [words[i % 5]] for i in range(40)}
    exact = {k: refs[0] for k, refs in references.items()}
    wrong = {k: ("pour the milk" if int(k[1:]) % 4 == 0 and words[int(k[1:]) % 5] != "pour the milk" else exact[k])
             for k in references}
    scored = scorers[False].score_sets(references, {"exact": exact, "wrong": wrong})
    row = combine_captioners([scored["exact"], scored["wrong"], scored["exact"]])
    assert row.captioners == 3 and row.by_captioner["cider"] == [scored["exact"].cider, scored["wrong"].cider,
                                                                  scored["exact"].cider]
    for name in ("bleu3", "bleu4", "rouge_l", "cider"):
        assert getattr(row, name) == pytest.approx((2 * getattr(scored["exact"], name) + getattr(scored["wrong"], name)) / 3)
    assert row.per_segment["cider"].shape == (3, 40) and row.as_dict()["cider_by_captioner"] == row.by_captioner["cider"]
    # One captioner is the row itself; three identical captioners give its very intervals.
    assert combine_captioners([scored["wrong"]]) is scored["wrong"]
    alike = combine_captioners([scored["wrong"]] * 3)
    assert alike.cider == pytest.approx(scored["wrong"].cider)
    assert {k: pytest.approx(v) for k, v in alike.intervals.items()} == scored["wrong"].intervals

    # The interval against the two-level bootstrap written out: each resample draws each row's captioners
    # with replacement and the segments with replacement, and averages the drawn captioners over the drawn
    # segments.
    cider = row.per_segment["cider"]
    members = intervals.member_shares(3) * 3  # draws of each captioner per resample
    segments = intervals.resample_indices(40)
    by_hand = [sum(members[r, m] * cider[m, segments[r]].mean() for m in range(3)) / 3 for r in range(len(segments))]
    assert row.intervals["cider"] == pytest.approx(list(np.percentile(by_hand, [2.5, 97.5])), rel=1e-9)
    stats = row.bleu_stats
    by_hand = [sum(members[r, m] * intervals.bleu_from_stats(stats[m, segments[r]].sum(axis=0), 4) for m in range(3)) / 3
               for r in range(len(segments))]
    assert row.intervals["bleu4"] == pytest.approx(list(np.percentile(by_hand, [2.5, 97.5])), rel=1e-9)


def test_an_order_that_one_captioners_seed_flips_is_not_resolved(scorers):
    """Two rows of three captioners each: the first row's captioners are mostly right, the second's
    mostly wrong, but captioner by captioner the sign flips. Taking the captioners as fixed, every
    segment's difference is the same positive share, so a bootstrap over the segments alone would call
    the order resolved; resampling the captioners too shows another training could reverse it."""
    words = ["stir the soup", "cut the onion", "pour the milk", "whisk the egg", "slice the bread"]
    references = {f"s{i:02d}": [words[i % 5]] for i in range(40)}
    exact = {k: refs[0] for k, refs in references.items()}
    wrong = {k: ("pour the milk" if words[int(k[1:]) % 5] != "pour the milk" else "stir the soup") for k in references}
    scored = scorers[False].score_sets(references, {"exact": exact, "wrong": wrong})
    better = combine_captioners([scored["exact"], scored["wrong"], scored["exact"]])
    than = combine_captioners([scored["wrong"], scored["exact"], scored["wrong"]])
    found = paired_difference(better, than)
    assert found["difference"] == pytest.approx((scored["exact"].cider - scored["wrong"].cider) / 3)
    assert found["captioners"] == [3, 3] and len(found["difference_by_captioner"]) == 3
    assert sorted(d > 0 for d in found["difference_by_captioner"]) == [False, True, True]
    fixed = intervals.bootstrap_mean(better.per_segment["cider"].mean(axis=0) - than.per_segment["cider"].mean(axis=0))
    assert fixed[0] > 0  # the captioners taken as they are: resolved
    assert found["difference_ci"][0] < 0 < found["difference_ci"][1] and found["verdict"] == "unresolved"
    # With the captioners agreeing, the same gap is resolved.
    agree = paired_difference(combine_captioners([scored["exact"]] * 3), combine_captioners([scored["wrong"]] * 3))
    assert agree["verdict"] == "holds"
