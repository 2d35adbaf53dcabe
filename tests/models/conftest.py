"""Fixtures of the model tests: a small joint vocabulary, the packaged BERT's tokenizer, and a
complete BertForPreTraining directory (the packaged MiniLM saved with its heads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from videobert.models.vocab import JointVocab


@pytest.fixture(scope="session")
def small_vocab() -> JointVocab:
    """A joint vocabulary small enough for fast unit tests (200 text ids, 50 visual words)."""
    return JointVocab(text_vocab_size=200, num_visual_tokens=50, cls_id=2, sep_id=3, mask_id=4, pad_id=0, unk_id=1)


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_dir):
    from videobert.models.hf_interop import load_text_tokenizer

    return load_text_tokenizer(minilm_dir)


@pytest.fixture(scope="session")
def minilm_vocab(minilm_tokenizer) -> JointVocab:
    """The packaged BERT's text vocabulary plus [>] and 300 visual words."""
    return JointVocab.from_tokenizer(minilm_tokenizer, num_visual_tokens=300)


@pytest.fixture(scope="session")
def complete_bert_dir(minilm_dir, tmp_path_factory) -> Path:
    """The packaged MiniLM as a full BertForPreTraining (heads initialised by transformers, then saved)."""
    from transformers import BertForPreTraining

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("minilm_with_heads")
    BertForPreTraining.from_pretrained(minilm_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def make_joint_batch():
    """``make_joint_batch(vocab, batch=, n_text=, n_video=, seed=)`` -> (input_ids, token_type_ids, attention_mask)."""
    return _joint_batch


def _joint_batch(vocab: JointVocab, *, batch: int = 3, n_text: int = 9, n_video: int = 8, seed: int = 0):
    """Real joint sequences ``[CLS] text [>] video [SEP]`` with their token types and a full mask."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        text = torch.randint(vocab.unk_id + 5, vocab.text_vocab_size, (n_text,), generator=g).tolist()
        video = torch.randint(0, vocab.num_visual_tokens, (n_video,), generator=g).tolist()
        rows.append(vocab.joint_sequence(text, video))
    input_ids = torch.tensor([ids for ids, _ in rows])
    token_type_ids = torch.tensor([types for _, types in rows])
    return input_ids, token_type_ids, torch.ones_like(input_ids)
