"""Shard tars, valid and broken, through every reader: the shard reader, the training loader's path
(metadata first, arrays when the item is built) and the tokenize stage.

A case writes a small shard (clip or token samples), applies one mutation (truncation, members
swapped, dropped or repeated, metadata of wrong types, arrays of another dtype or shape, a forged
.npy header, an unsafe key, bad UTF-8, flipped bytes, compression) and reads it. Every case must end
without a traceback and within its time limit; every problem reported names the shard; and every
sample the mutation left alone is read back exactly as written (no good sample is lost).
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fuzzing import CHANGED, LISTED, READ, REFUSED, TEST_SECONDS, fuzz_settings, time_limit
from hypothesis import given
from hypothesis import strategies as st

from videobert.models.visual.codebook import Codebook
from videobert.models.visual.encoder import EncoderSpec
from videobert.models.visual.synthetic import FEATURE_DIM
from videobert.shards import reader, schema

FPS, CLIP_LEN, SIZE = 10.0, 3, (8, 8)

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=5,
)
UNSAFE_KEYS = st.sampled_from(["dir/evil-s00000", "../up-s00000", "/abs-s00000", "a b-s00000", "", "x" * 300,
                               "tab\there", "dot.key", "back\\slash", ".hidden", "__meta__"])

pytestmark = pytest.mark.timeout(TEST_SECONDS, method="thread")  # the signal is the cases' (time_limit)


@st.composite
def samples(draw, kind: str) -> list[schema.Sample]:
    out = []
    for i in range(draw(st.integers(2, 5))):
        n = draw(st.integers(1, 3))
        meta = schema.SampleMeta(
            video_id=f"video{i // 2}", segment_index=i % 2, start=1.5 * i, end=1.5 * i + 1.0, fps=FPS,
            clip_len=CLIP_LEN, frame_size=SIZE, n_clips=n, first_frame=15 * i, source="fuzz",
            kind=kind, codebook_hash="fuzz-codebook" if kind == schema.TOKEN_KIND else None,
        )
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        arrays = ({"frames": rng.integers(0, 256, (n, CLIP_LEN, *SIZE, 3), dtype=np.uint8)} if kind == schema.CLIP_KIND
                  else {"tokens": rng.integers(0, 16, n).astype(np.int32),
                        "features": rng.standard_normal((n, 4)).astype(np.float16) if draw(st.booleans()) else None})
        out.append(schema.Sample(key=schema.make_key(meta.video_id, meta.segment_index), text=f"caption {i} ✓",
                                 meta=meta, **arrays))
    return out


def members_of(sample: schema.Sample) -> list[tuple[str, bytes]]:
    encoded = schema.encode_sample(sample)
    return [(f"{sample.key}.{field}", encoded[field]) for field in sorted(encoded) if field != "__key__"]


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> list[tuple[int, int]]:
    """A plain tar of ``members``; the (start, end) byte range of each (header to padded data)."""
    spans = []
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            start = tar.offset
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o444
            tar.addfile(info, io.BytesIO(data))
            spans.append((start, tar.offset))
    return spans


@st.composite
def mutation(draw, members: list[tuple[str, bytes]], keys: list[str]):
    """(what was done, the new members or None when the bytes are mutated after writing, keys touched)."""
    kind = draw(st.sampled_from(["none", "truncate", "swap members", "drop member", "repeat member", "metadata field",
                                 "metadata bytes", "array dtype", "array shape", "npy header", "unsafe key",
                                 "text bytes", "flip bytes", "gzip"]))
    members = list(members)
    i = draw(st.integers(0, len(members) - 1))
    name, data = members[i]
    key, field = name.split(".", 1)
    if kind in ("none", "truncate", "flip bytes", "gzip"):
        return kind, members, set()
    if kind == "swap members":
        j = draw(st.integers(0, len(members) - 1))
        members[i], members[j] = members[j], members[i]
        return kind, members, {key, members[i][0].split(".", 1)[0]}
    if kind == "drop member":
        return kind, members[:i] + members[i + 1:], {key}
    if kind == "repeat member":
        return kind, members[: i + 1] + [members[i]] + members[i + 1:], {key}
    target = draw(st.sampled_from([n for n, _ in members if n.startswith(key + ".")]))
    t = [n for n, _ in members].index(target)
    tkey, tfield = target.split(".", 1)
    new_data = _mutate_member(draw, kind, tfield, members[t][1])
    if kind == "unsafe key":
        bad = draw(UNSAFE_KEYS)
        members = [(n.replace(tkey + ".", bad + ".", 1) if n.startswith(tkey + ".") else n, d) for n, d in members]
        return kind, members, {tkey}
    if new_data is None:
        return "none", members, set()
    members[t] = (target, new_data)
    return kind, members, {tkey}


def _mutate_member(draw, kind: str, field: str, data: bytes) -> bytes | None:
    if kind == "metadata field" and field == schema.META:
        meta = json.loads(data)
        choice = draw(st.sampled_from(sorted(meta) + ["<drop>", "<unknown>"]))
        if choice == "<drop>":
            meta.pop(draw(st.sampled_from(sorted(meta))))
        elif choice == "<unknown>":
            meta["surprise"] = draw(JSON_VALUES)
        else:
            meta[choice] = draw(JSON_VALUES)
        return json.dumps(meta).encode()
    if kind == "metadata bytes" and field == schema.META:
        return draw(st.sampled_from([b"[1]", b'"x"', b"null", b"{", b"\xff\xfe", b"1e999", b"{}",
                                     b"9" * 5000, b"[" * 5000 + b"]" * 5000]))
    if kind == "text bytes" and field == schema.TEXT:
        return b"bad \xff\xfe utf-8"
    if field.endswith(".npy"):
        array = schema.decode_array(data, "original")
        if kind == "array dtype":
            dtype = draw(st.sampled_from([np.int64, np.float32, np.uint16, np.int8, np.bool_, ">i4", "<U3"]))
            return schema.encode_array(array.astype(dtype))
        if kind == "array shape":
            shape = draw(st.sampled_from([(array.size,), (1, *array.shape), array.shape[:-1] or (0,), (0, *array.shape[1:])]))
            return schema.encode_array(np.zeros(shape, array.dtype))
        if kind == "npy header":
            return _forged_header(draw, data, array)
    return None


def _forged_header(draw, data: bytes, array: np.ndarray) -> bytes:
    """The member's bytes under an .npy header that lies (a huge or odd shape, another dtype, pickle)."""
    shape = draw(st.sampled_from([(10**12,), (2**62, 2**62), (-1,), (array.shape[0] + 1, *array.shape[1:]), ()]))
    descr = draw(st.sampled_from([array.dtype.str, "|O", "<f8", "garbage"]))
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    body = data[data.index(b"\n") + 1:] if draw(st.booleans()) else b""
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + body


def _byte_mutation(draw, kind: str, path: Path, spans: list[tuple[int, int]], members) -> tuple[int | None, set[str]]:
    """Mutate the written tar in place: (where the reader must stop trusting it, keys touched)."""
    data = path.read_bytes()
    if kind == "truncate":
        at = draw(st.integers(0, len(data) - 1))
        path.write_bytes(data[:at])
        return at, set()
    if kind == "flip bytes":
        at = draw(st.integers(0, len(data) - 1))
        path.write_bytes(data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:])
        hit = next((i for i, (start, end) in enumerate(spans) if start <= at < end), None)
        if hit is None:
            return None, set()  # the end-of-archive blocks
        if at < spans[hit][0] + tarfile.BLOCKSIZE:  # a header: what follows cannot be found any more
            return spans[hit][0], set()
        return None, {members[hit][0].split(".", 1)[0]}  # one member's data
    if kind == "gzip":
        path.write_bytes(gzip.compress(data))
        return 0, set()
    return None, set()


@pytest.fixture(scope="module")
def codebook_path(tmp_path_factory) -> Path:
    """A codebook of the synthetic encoder for clips of this file's size (random centroids)."""
    g = torch.Generator().manual_seed(0)
    spec = EncoderSpec(name="synthetic", fps=FPS, clip_len=CLIP_LEN, frame_size=SIZE, feature_dim=FEATURE_DIM)
    book = Codebook(spec=spec, centroids=[torch.randn(1, 4, FEATURE_DIM, generator=g)])
    return book.save(tmp_path_factory.mktemp("codebook") / "codebook.safetensors")


def same(a: schema.Sample, b: schema.Sample) -> bool:
    arrays = all((x is None and y is None) or (x is not None and y is not None and x.dtype == y.dtype
                                                 and np.array_equal(x, y))
                 for x, y in ((a.frames, b.frames), (a.tokens, b.tokens), (a.features, b.features)))
    return a.key == b.key and a.text == b.text and a.meta == b.meta and arrays


def good_samples(originals, members, spans, touched, damage_at) -> list[schema.Sample]:
    """The samples a reader must return whole: untouched, their members together and before any damage."""
    names = [n for n, _ in members]
    good = []
    for sample in originals:
        if sample.key in touched:
            continue
        own = [i for i, n in enumerate(names) if n.split(".", 1)[0] == sample.key]
        contiguous = own == list(range(own[0], own[0] + len(own))) if own else False
        before_damage = damage_at is None or spans[own[-1]][1] <= damage_at
        if contiguous and before_damage:
            good.append(sample)
    return good


@given(data=st.data(), kind=st.sampled_from([schema.CLIP_KIND, schema.TOKEN_KIND]))
@fuzz_settings(150)
def test_shard_readers_list_bad_samples_and_keep_the_good(tmp_path_factory, tally, data, kind):
    originals = data.draw(samples(kind))
    members = [m for s in originals for m in members_of(s)]
    what, members, touched = data.draw(mutation(members, [s.key for s in originals]))
    path = tmp_path_factory.mktemp("shard") / "shard-000000.tar"
    spans = write_tar(path, members)
    damage_at, flipped = _byte_mutation(data.draw, what, path, spans, members)
    expected = good_samples(originals, members, spans, touched | flipped, damage_at)

    problems: list[tuple[str, Exception]] = []
    with time_limit():
        read = list(reader.iter_samples([str(path)], on_error=lambda url, e: problems.append((url, e))))
    by_key = {s.key: s for s in read}
    lost = [s.key for s in expected if s.key not in by_key or not same(s, by_key[s.key])]
    assert not lost, f"{what}: good samples lost or changed: {lost}; problems {problems}"
    for url, error in problems:
        assert url == str(path) and str(error).startswith(str(path)), (what, url, error)
    if what == "none":
        assert not problems and len(read) == len(originals)
    _loader_path(path, expected, what)
    tally.add("shard tars (mutated)", "shards", READ if not problems else LISTED if read else REFUSED)
    intact = sum(1 for s in originals if s.key in by_key and same(s, by_key[s.key]))
    changed = sum(1 for s in originals if s.key in by_key and not same(s, by_key[s.key]))
    tally.add("shard tars (mutated)", "samples", READ, intact)
    tally.add("shard tars (mutated)", "samples", CHANGED, changed)
    tally.add("shard tars (mutated)", "samples", LISTED, len(originals) - intact - changed)


def _loader_path(path: Path, expected: list[schema.Sample], what: str) -> None:
    """What a training loader worker runs: light samples (metadata only), then arrays per item."""
    from videobert.trainer.data import ReadErrors, _light_samples

    errors = ReadErrors()
    decoded = {}
    with time_limit():
        for light in _light_samples([str(path)], errors):
            try:
                decoded[light.key] = light.decode()
            except schema.ShardFormatError as e:  # BatchStream._decode lists these and goes on
                errors(str(path), e)
    assert all(s.key in decoded and same(s, decoded[s.key]) for s in expected), (what, list(errors.recent))


@given(data=st.data())
@fuzz_settings(25)
def test_tokenize_lists_bad_samples_and_writes_the_good(tmp_path_factory, tally, codebook_path, data):
    from videobert.shards.tokenize_clips import TokenizeConfig, tokenize

    originals = data.draw(samples(schema.CLIP_KIND))
    members = [m for s in originals for m in members_of(s)]
    what, members, touched = data.draw(mutation(members, [s.key for s in originals]))
    root = tmp_path_factory.mktemp("tokenize")
    path = root / "shard-000000.tar"
    spans = write_tar(path, members)
    damage_at, flipped = _byte_mutation(data.draw, what, path, spans, members)
    expected = {s.key for s in good_samples(originals, members, spans, touched | flipped, damage_at)}
    with time_limit():
        summary = tokenize(TokenizeConfig(clips=(str(path),), codebook=str(codebook_path), out=str(root / "out"),
                                          workers=1, progress=False))
    assert summary.samples_written + summary.samples_skipped == summary.samples_read
    outputs = [str(p) for p in schema.complete_shards(root / "out")]
    written = list(reader.iter_samples(outputs))
    assert expected <= {s.key for s in written}, what
    refused_whole = summary.samples_read == 0 and (root / "out" / schema.ERRORS_FILE).stat().st_size > 0
    assert len(outputs) == (0 if refused_whole else 1), "an input refused whole leaves no output shard, empty or not"
    assert refused_whole or what != "gzip"
    for output in outputs:
        with tarfile.open(output) as tar:
            assert all(schema.key_problem(m.name.split(".", 1)[0]) is None for m in tar), "no unsafe member name written"
    lines = [json.loads(line) for line in (root / "out" / schema.ERRORS_FILE).read_text().splitlines()]
    assert all(line["input"] == str(path) and str(path) in line["reason"] for line in lines), lines
    tally.add("shard tars through tokenize", "samples", READ, summary.samples_written)
    tally.add("shard tars through tokenize", "samples", LISTED, len(originals) - summary.samples_written)
