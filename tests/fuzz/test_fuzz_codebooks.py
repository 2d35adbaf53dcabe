"""Codebook files, valid and damaged: flipped, cut or inserted bytes, metadata of every type, centroid
tensors of another dtype, shape or count. Each loads as the codebook that was saved, or is refused with
one ``CodebookError`` that names the file; nothing else escapes."""

from __future__ import annotations

import json

import pytest
import torch
from fuzzing import READ, REFUSED, TEST_SECONDS, fuzz_settings, time_limit
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file

from videobert.models.visual.codebook import Codebook, CodebookError
from videobert.models.visual.encoder import EncoderSpec

VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**65, 2**65) | st.floats() | st.text(max_size=10),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                      max_leaves=6)

pytestmark = pytest.mark.timeout(TEST_SECONDS, method="thread")  # the signal is the cases' (time_limit)


def saved(path, depth: int, branching: int, seed: int) -> Codebook:
    g = torch.Generator().manual_seed(seed)
    spec = EncoderSpec(name="synthetic", fps=10.0, clip_len=15, frame_size=(64, 64), feature_dim=6)
    book = Codebook(spec=spec, centroids=[torch.randn(branching**level, branching, 6, generator=g) for level in range(depth)])
    book.save(path)
    return book


@st.composite
def damaged(draw, path, book: Codebook) -> str:
    """Damage the file at ``path`` in one way; what was done."""
    kind = draw(st.sampled_from(["none", "flip", "truncate", "insert", "metadata value", "metadata text",
                                 "tensor dtype", "tensor shape", "tensor dropped", "tensor added"]))
    raw = path.read_bytes()
    at = draw(st.integers(0, len(raw) - 1))
    if kind == "flip":
        path.write_bytes(raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1:])
    elif kind == "truncate":
        path.write_bytes(raw[:at])
    elif kind == "insert":
        path.write_bytes(raw[:at] + draw(st.binary(min_size=1, max_size=16)) + raw[at:])
    elif kind != "none":
        tensors = {f"level_{i}": c.clone() for i, c in enumerate(book.centroids)}
        meta = book.metadata()
        name = draw(st.sampled_from(sorted(tensors)))
        if kind == "metadata value":
            field = draw(st.sampled_from(sorted(meta) + ["encoder.fps", "encoder.frame_size", "encoder.name"]))
            node, key = (meta["encoder"], field.split(".")[1]) if "." in field else (meta, field)
            node[key] = draw(VALUES)
        elif kind == "tensor dtype":
            tensors[name] = tensors[name].to(draw(st.sampled_from([torch.float16, torch.int32, torch.bool, torch.float64])))
        elif kind == "tensor shape":
            tensors[name] = tensors[name].reshape(-1) if draw(st.booleans()) else tensors[name][..., :-1].contiguous()
        elif kind == "tensor dropped":
            tensors.pop(name)
        elif kind == "tensor added":
            tensors["level_9"] = torch.zeros(2, 2, 6)
        text = json.dumps(meta) if kind != "metadata text" else draw(st.sampled_from(
            ["", "{", "[]", "null", "9" * 5000, "[" * 3000 + "]" * 3000, '{"format": "videobert-codebook"}']))
        save_file(tensors, str(path), metadata={"codebook": text})
    return kind


@given(data=st.data(), depth=st.integers(1, 3), branching=st.integers(2, 4), seed=st.integers(0, 99))
@fuzz_settings(100)
def test_codebook_files_load_or_are_refused_naming_the_file(tmp_path_factory, tally, data, depth, branching, seed):
    path = tmp_path_factory.mktemp("codebook") / "codebook.safetensors"
    book = saved(path, depth, branching, seed)
    kind = data.draw(damaged(path, book))
    try:
        with time_limit():
            loaded = Codebook.load(path)
    except CodebookError as e:
        assert str(path) in str(e), e
        assert kind != "none", e
        tally.add("codebook files", "files", REFUSED)
        return
    assert loaded.hash == book.hash and all(torch.equal(a, b) for a, b in zip(loaded.centroids, book.centroids)), kind
    tally.add("codebook files", "files", READ)
