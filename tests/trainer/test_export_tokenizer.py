"""An export a transformers user can feed: its tokenizer keeps each visual word one id and lays out
``tokenizer(text, visual_words)`` as the model was trained, and transformers' own BertForMaskedLM
fills in a verb that depends on the visual words (the tiny preset trained on ``eval_corpus``, where
only the video tells the verb)."""

from __future__ import annotations

from pathlib import Path

import eval_corpus
import numpy as np
import pytest
import tiny_videobert
import torch

from videobert.models.vocab import JointVocab
from videobert.shards import reader

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return eval_corpus.write_corpus(tmp_path_factory.mktemp("export-corpus"))


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> Path:
    return tiny_videobert.exported_tiny(corpus, tmp_path_factory.mktemp("export-model") / "export", steps=300)


def test_visual_words_stay_one_id_and_the_pair_is_laid_out_as_trained(trained):
    from transformers import AutoTokenizer, BertTokenizerFast

    from videobert.trainer.evaluation.load import load_model

    vocab = load_model(trained).vocab
    tokenizer = AutoTokenizer.from_pretrained(str(trained))
    words = " ".join(JointVocab.visual_word(v) for v in (3, 12))
    pair = tokenizer("Now let me show you how to [MASK] the tomato", words)
    tokens = tokenizer.convert_ids_to_tokens(pair["input_ids"])
    assert tokens == ["[CLS]", "now", "let", "me", "show", "you", "how", "to", "[MASK]", "the", "tomato", "[>]",
                      "[V00003]", "[V00012]", "[SEP]"]
    assert pair["input_ids"][-4:] == [vocab.video_sep_id, vocab.visual_offset + 3, vocab.visual_offset + 12, vocab.sep_id]
    assert pair["token_type_ids"] == [0] * 11 + [1] * 4  # as models.vocab.JointVocab.joint_sequence
    assert tokenizer("cut the onion")["token_type_ids"] == [0] * 5
    # BertTokenizerFast rebuilds BERT's own pair template, but it too keeps every visual word whole.
    bert = BertTokenizerFast.from_pretrained(str(trained))
    assert bert.convert_ids_to_tokens(bert("cut [>] [V00003][V00012]")["input_ids"]) == [
        "[CLS]", "cut", "[>]", "[V00003]", "[V00012]", "[SEP]"]


def test_transformers_bert_for_masked_lm_fills_in_the_verb_the_video_shows(corpus, trained):
    from transformers import AutoTokenizer, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(str(trained))
    model = BertForMaskedLM.from_pretrained(str(trained)).eval()
    verb_ids = [tokenizer.convert_tokens_to_ids(v) for v in eval_corpus.VERBS]
    sentence = eval_corpus.TEMPLATE.format(verb="[MASK]", noun="[MASK]")
    samples = list(reader.iter_samples(reader.resolve_shards([str(corpus["heldout"])])))
    batch = tokenizer([sentence] * len(samples), [" ".join(JointVocab.visual_word(int(t)) for t in s.tokens) for s in samples],
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits  # (B, T, vocab)
    first_mask = (batch["input_ids"] == tokenizer.mask_token_id).int().argmax(dim=1)
    at_verb = logits[torch.arange(len(samples)), first_mask][:, verb_ids]
    predicted = [eval_corpus.VERBS[i] for i in at_verb.argmax(dim=1).tolist()]
    truth = [eval_corpus.VERBS[int(s.tokens[0])] for s in samples]  # the first clip's word names the verb
    assert np.mean([p == t for p, t in zip(predicted, truth)]) >= 0.75, list(zip(predicted, truth))
    assert len(set(predicted)) >= 3  # not one answer for every video
    swapped = tokenizer([sentence] * 2, [JointVocab.visual_word(0), JointVocab.visual_word(2)], return_tensors="pt")
    with torch.no_grad():
        verbs = model(**swapped).logits[:, 8][:, verb_ids].argmax(dim=1).tolist()
    assert verbs[0] != verbs[1], "the same sentence with other visual words must get another verb"
