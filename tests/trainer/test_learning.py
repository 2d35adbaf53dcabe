"""Alignment learns: a tiny VideoBERT on a tiny corpus whose videos show what their text says tells
a segment's own video from another's on held-out segments, and cannot when its labels are shuffled.

The corpus: each segment's text names a verb and a noun ("now you cut the tomato"); its video is six
visual words drawn from the noun's four and the verb's four (of 48). The model: the ``tiny`` preset
from random values, trained in this process by the project's example builder and model with the
binary alignment loss of the pair head (``[CLS]`` + the bilinear score of the two modalities' mean
states, the demo's; negatives as extra rows) and the masked-token losses weighted 0, so that the test
is about what the alignment labels teach. With the ``[CLS]`` head alone a tiny model from random
values sits on a plateau for a number of steps that varies with the seed and the machine's floating
point (ROC-AUC 0.49-0.90 over four seeds at 350 steps): a test of the labels would then test the
plateau; the pair head reaches 0.98-0.99 on every seed by 150 steps. Evaluation: ROC-AUC of the
alignment head's P(aligned) over clean held-out pairs, each segment with its own video and another's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videobert.models.config import preset
from videobert.models.videobert import MODEL_INPUTS, VideoBertForPreTraining
from videobert.models.vocab import IGNORE_INDEX, JointVocab
from videobert.trainer.config import ObjectivesConfig
from videobert.trainer.evaluation.heldout import roc_auc
from videobert.trainer.evaluation.retrieval import aligned_probabilities, pair_rows
from videobert.trainer.example_builder import ExampleBuilder, TrainingItem

VERBS = ("cut", "wash", "peel", "fry")
NOUNS = ("tomato", "onion", "potato", "carrot", "egg", "bread", "cheese", "apple")
WORDS_PER_CLASS = 4
NUM_VISUAL = WORDS_PER_CLASS * (len(VERBS) + len(NOUNS))
STEPS = 200


def segments(count: int, seed: int) -> list[TrainingItem]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(count):
        verb, noun = int(rng.integers(len(VERBS))), int(rng.integers(len(NOUNS)))
        noun_words = noun * WORDS_PER_CLASS + rng.integers(WORDS_PER_CLASS, size=3)
        verb_words = (len(NOUNS) + verb) * WORDS_PER_CLASS + rng.integers(WORDS_PER_CLASS, size=3)
        clips = rng.permutation(np.concatenate([noun_words, verb_words]))
        items.append(TrainingItem(key=f"s{seed}-{i}", video_id=f"v{seed}-{i}", text=f"now you {VERBS[verb]} the {NOUNS[noun]}",
                                  clips=clips.astype(np.int64)))
    return items


def train(tokenizer, vocab, *, shuffle_labels: bool, seed: int = 0) -> VideoBertForPreTraining:
    torch.manual_seed(seed)
    model = VideoBertForPreTraining(preset("tiny", vocab, text_mlm_weight=0.0, video_mlm_weight=0.0,
                                           alignment_head="pair"))
    objectives = ObjectivesConfig(joint_fraction=1.0, text_fraction=0.0, video_fraction=0.0, negatives_per_positive=1,
                                  max_stride=1)
    builder = ExampleBuilder(vocab, tokenizer, objectives, max_seq_len=32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    corpus, rng = segments(256, seed=1), np.random.default_rng(seed)
    model.train()
    for _ in range(STEPS):
        batch = builder.build([corpus[i] for i in rng.choice(len(corpus), 32, replace=False)], rng)
        if shuffle_labels:
            labelled = batch["alignment_labels"] != IGNORE_INDEX
            batch["alignment_labels"][labelled] = rng.permutation(batch["alignment_labels"][labelled])
        out = model(**{k: torch.as_tensor(batch[k]) for k in MODEL_INPUTS})
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    return model.eval()


def heldout_auc(model, tokenizer, vocab) -> float:
    items = segments(96, seed=2)
    texts = tokenizer([it.text for it in items], add_special_tokens=False)["input_ids"]
    rows, aligned = [], []
    for i, item in enumerate(items):
        other = items[(i + 1 + i % 7) % len(items)]
        rows += [pair_rows(vocab, texts[i], item.clips, 32), pair_rows(vocab, texts[i], other.clips, 32)]
        aligned += [1, 0]
    scores = aligned_probabilities(model, vocab, rows, torch.device("cpu"))
    return roc_auc(scores, np.array(aligned))


@pytest.fixture(scope="module")
def tokenizer(minilm_tokenizer):
    return minilm_tokenizer


@pytest.fixture(scope="module")
def vocab(tokenizer):
    return JointVocab.from_tokenizer(tokenizer, NUM_VISUAL)


def test_alignment_learns_from_true_labels(tokenizer, vocab):
    auc = heldout_auc(train(tokenizer, vocab, shuffle_labels=False), tokenizer, vocab)
    assert auc > 0.8, f"held-out alignment ROC-AUC {auc:.3f} after {STEPS} steps"


def test_alignment_learns_nothing_from_shuffled_labels(tokenizer, vocab):
    auc = heldout_auc(train(tokenizer, vocab, shuffle_labels=True), tokenizer, vocab)
    assert 0.3 < auc < 0.65, f"held-out alignment ROC-AUC {auc:.3f} with shuffled labels"
