"""Fixtures of the trainer tests: token shards and a codebook written through the real schema."""

from __future__ import annotations

import pytest
from shard_factory import write_codebook, write_token_shards


@pytest.fixture
def token_shards(tmp_path):
    def make(**kw):
        folder = tmp_path / f"tokens-{len(list(tmp_path.iterdir()))}"
        keys = write_token_shards(folder, **kw)
        return folder, keys

    return make


@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory):
    """Token shards (train: 8 shards, held-out: 2) made with a saved codebook."""
    root = tmp_path_factory.mktemp("run-inputs")
    codebook = write_codebook(root / "codebook.safetensors")
    write_token_shards(root / "train", videos=32, segments=4, shards=8, codebook_hash=codebook.hash,
                       num_tokens=codebook.num_leaves)
    write_token_shards(root / "heldout", videos=8, segments=4, shards=2, codebook_hash=codebook.hash,
                       num_tokens=codebook.num_leaves, seed=1)
    return root


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_dir):
    """The packaged MiniLM's fast WordPiece tokenizer."""
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(str(minilm_dir))
