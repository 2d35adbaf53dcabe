"""Zero-shot classification parts on the packaged BERT's tokenizer: the template, multi-piece labels,
scoring restricted to the labels, top-k counting; label files; ROC-AUC."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from videobert.models.config import preset
from videobert.models.videobert import VideoBertForPreTraining
from videobert.models.vocab import JointVocab
from videobert.trainer.evaluation.heldout import roc_auc
from videobert.trainer.evaluation.intervals import wilson
from videobert.trainer.evaluation.labels import (
    LabelError, LabelVocabulary, read_labels, read_vocabulary, words_of_sentence,
)
from videobert.trainer.evaluation.zeroshot import (
    ZeroShotClassifier, ZeroShotError, ZeroShotTally, build_prompt, label_pieces, mask_log_probs, prompt_sequences,
)

TEMPLATE_IDS = [2085, 2292, 2033, 2265, 2017, 2129, 2000]  # now let me show you how to
THE = 1996


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from videobert.models.hf_interop import load_text_tokenizer

    return load_text_tokenizer(minilm_dir)


@pytest.fixture(scope="module")
def vocab(tokenizer):
    return JointVocab.from_tokenizer(tokenizer, 16)


@pytest.fixture(scope="module")
def model(vocab):
    torch.manual_seed(0)
    return VideoBertForPreTraining(preset("tiny", vocab)).eval()


def test_paper_template_and_its_mask_positions(tokenizer, vocab):
    prompt = build_prompt(tokenizer, vocab.mask_id)
    assert list(prompt.text_ids) == [*TEMPLATE_IDS, vocab.mask_id, THE, vocab.mask_id]
    assert prompt.verb_at == (7,) and prompt.noun_at == (9,)

    (joint, types), = prompt_sequences(vocab, prompt, [np.array([3, 5])], max_seq_len=64)
    assert joint == [vocab.cls_id, *TEMPLATE_IDS, vocab.mask_id, THE, vocab.mask_id, vocab.video_sep_id,
                     vocab.visual_offset + 3, vocab.visual_offset + 5, vocab.sep_id]
    assert joint[1 + 7] == joint[1 + 9] == vocab.mask_id
    assert types == [0] * 11 + [1] * 4
    (alone, alone_types), = prompt_sequences(vocab, prompt, None, max_seq_len=64)
    assert alone == [vocab.cls_id, *prompt.text_ids, vocab.sep_id] and set(alone_types) == {0}


def test_multi_piece_labels_get_as_many_masks(tokenizer, vocab):
    assert label_pieces(tokenizer, ["julienne", "stir"]) == [(19290, 2638), (16130,)]  # julien ##ne; stir
    prompt = build_prompt(tokenizer, vocab.mask_id, verb_pieces=2, noun_pieces=3)
    assert list(prompt.text_ids) == [*TEMPLATE_IDS, vocab.mask_id, vocab.mask_id, THE, *[vocab.mask_id] * 3]
    assert prompt.verb_at == (7, 8) and prompt.noun_at == (10, 11, 12)
    # The noun may come first in another template; positions follow the words.
    swapped = build_prompt(tokenizer, vocab.mask_id, "the {noun} is what we {verb}")
    assert swapped.noun_at == (1,) and swapped.verb_at == (5,)
    with pytest.raises(ZeroShotError, match="once each"):
        build_prompt(tokenizer, vocab.mask_id, "now {verb} it")


def test_scores_are_mean_piece_log_probs_over_the_labels_only(model, tokenizer, vocab):
    labels = LabelVocabulary(verbs=("stir", "julienne", "shake"), nouns=("tomato", "zucchini"))
    classifier = ZeroShotClassifier(model, tokenizer, vocab, labels, max_seq_len=64)
    # One pass for the single-piece shape, one per extra piece count of either slot.
    assert sorted(classifier.prompts) == [(1, 1), (1, 3), (2, 1)]
    videos = [np.array([1, 2, 3]), np.array([7])]
    scores = classifier.score(videos)
    assert scores["verb"].shape == (2, 3) and scores["noun"].shape == (2, 2)

    base = mask_log_probs(model, vocab, classifier.prompts[(1, 1)], videos, 64, torch.device("cpu"))
    assert torch.allclose(scores["verb"][:, 0], base[:, 0, 16130])  # stir, at the verb mask
    assert torch.allclose(scores["noun"][:, 0], base[:, 1, 20856])  # tomato, at the noun mask
    two = mask_log_probs(model, vocab, classifier.prompts[(2, 1)], videos, 64, torch.device("cpu"))
    assert torch.allclose(scores["verb"][:, 1], (two[:, 0, 19290] + two[:, 1, 2638]) / 2)
    three = mask_log_probs(model, vocab, classifier.prompts[(1, 3)], videos, 64, torch.device("cpu"))
    zucchini = label_pieces(tokenizer, ["zucchini"])[0]
    assert torch.allclose(scores["noun"][:, 1], sum(three[:, 1 + i, p] for i, p in enumerate(zucchini)) / 3)

    # Restricted: whatever the model prefers over the whole vocabulary, a label is predicted.
    best_anywhere = base[0, 0].argmax().item()
    assert best_anywhere not in (16130, 6073)
    assert scores["verb"][0].argmax().item() in range(3)


def test_video_tokens_reach_the_prediction(model, tokenizer, vocab):
    labels = LabelVocabulary(verbs=("stir", "shake"), nouns=("tomato", "bread"))
    classifier = ZeroShotClassifier(model, tokenizer, vocab, labels, max_seq_len=64)
    a, b = classifier.score([np.array([1, 1]), np.array([9, 4])])["verb"]
    assert not torch.allclose(a, b), "different videos must give different scores"
    too_short = ZeroShotClassifier(model, tokenizer, vocab, labels, max_seq_len=64)
    too_short.max_seq_len = 14
    with pytest.raises(ZeroShotError, match="cut the template"):
        too_short.score([np.array([1] * 10)])


def test_top_k_tally_and_chance_rows():
    tally = ZeroShotTally({"verb": 3, "noun": 6})
    scores = {"verb": torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.3, 0.4]]),
              "noun": torch.tensor([[6.0, 5, 4, 3, 2, 1], [1.0, 2, 3, 4, 5, 6]])}
    targets = {"verb": np.array([0, 0]), "noun": np.array([5, 0])}
    tally.add_targets(targets)
    tally.add("cross_modal", scores, targets)
    tally.add("language_prior", {k: v[:1].expand(2, -1) for k, v in scores.items()}, targets)
    r = tally.reduce()
    assert r["segments"] == 2
    assert r["cross_modal_verb_top1"] == 0.5 and r["cross_modal_verb_top5"] == 1.0
    assert r["cross_modal_noun_top1"] == 0.0 and r["cross_modal_noun_top5"] == 0.0  # rank 6 both times
    assert r["language_prior_noun_top1"] == 0.5 and r["language_prior_noun_top5"] == 0.5
    assert r["chance_verb_top1"] == pytest.approx(1 / 3) and r["chance_verb_top5"] == 1.0
    assert r["chance_noun_top5"] == pytest.approx(5 / 6)
    assert r["constant_verb_top1"] == 1.0 and r["constant_noun_top1"] == 0.5
    # Wilson intervals over the 2 segments; uniform chance is exact and has none.
    assert r["cross_modal_verb_top1_ci"] == pytest.approx(list(wilson(1, 2)))
    assert r["language_prior_noun_top5_ci"] == pytest.approx(list(wilson(1, 2)))
    assert r["constant_verb_top1_ci"] == pytest.approx(list(wilson(2, 2))) and "chance_verb_top1_ci" not in r


def test_labels_from_both_file_forms(tmp_path):
    (tmp_path / "vocabulary.json").write_text(json.dumps({"verbs": ["stir", "Slice"], "nouns": ["tomato", "olive oil"]}))
    vocabulary = read_vocabulary(tmp_path / "vocabulary.json")
    assert vocabulary.verbs == ("stir", "slice")
    lines = [{"video": "v1", "start": 0, "end": 4, "verb": "stir", "noun": "tomato"},
             {"video": "v1", "start": 4, "end": 8, "verb": "whisk", "noun": "tomato"}]
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    index = read_labels(tmp_path / "labels.jsonl", vocabulary)
    assert index.read == 2 and index.kept == 1 and "whisk" in index.problems[0]["reason"]
    assert index.find("v1", 0.5, 3.9).verb == "stir"
    assert index.find("v1", 3.5, 9.0) is None, "most of it lies outside every labelled segment"
    assert index.find("v2", 0, 4) is None

    youcook = {"database": {"v9": {"subset": "validation", "annotations": [
        {"segment": [0, 5], "sentence": "Slice the tomato thinly.", "id": 0},
        {"segment": [5, 9], "sentence": "now stir in the olive oil", "id": 1},
        {"segment": [9, 12], "sentence": "add salt", "id": 2},
        {"segment": [12, 14], "sentence": "whatever", "verb": "stir", "noun": "tomato", "id": 3}]}}}
    (tmp_path / "annotations.json").write_text(json.dumps(youcook))
    index = read_labels(tmp_path / "annotations.json", vocabulary)
    found = [(x.verb, x.noun) for x in index.by_video["v9"]]
    assert found == [("slice", "tomato"), ("stir", "olive oil"), ("stir", "tomato")]
    assert index.read == 4 and len(index.problems) == 1 and "annotation 2" in index.problems[0]["input"]
    assert words_of_sentence("the tomato we stir", vocabulary) == ("stir", None)


def test_unusable_label_files_say_why(tmp_path):
    vocabulary = LabelVocabulary(verbs=("stir",), nouns=("tomato",))
    (tmp_path / "bad.json").write_text('{"videos": {}}')
    with pytest.raises(LabelError, match="database"):
        read_labels(tmp_path / "bad.json", vocabulary)
    (tmp_path / "none.jsonl").write_text('{"video": "a", "start": 0, "end": 1, "verb": "cut", "noun": "egg"}\n')
    with pytest.raises(LabelError, match="none of its 1 segments"):
        read_labels(tmp_path / "none.jsonl", vocabulary)
    (tmp_path / "vocab.json").write_text('{"verbs": ["stir"]}')
    with pytest.raises(LabelError, match="nouns"):
        read_vocabulary(tmp_path / "vocab.json")
    with pytest.raises(LabelError, match="does not exist"):
        read_labels(tmp_path / "missing.jsonl", vocabulary)


def test_roc_auc_matches_scikit_learn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + 0.4 * labels, 1)  # rounded: many ties
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0
    assert roc_auc(np.array([0.3, 0.3]), np.array([0, 1])) == 0.5
    assert roc_auc(np.array([0.1, 0.9]), np.array([1, 1])) is None
