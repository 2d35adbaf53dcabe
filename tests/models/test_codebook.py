"""The codebook file and the visual tokenizer: round trip, hash, refusals of mismatched inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from videobert.models.visual.codebook import CODEBOOK_FILE, Codebook, CodebookError
from videobert.models.visual.encoder import EncoderSpec
from videobert.models.visual.kmeans import fit_hierarchical_kmeans
from videobert.models.visual.s3d import S3D
from videobert.models.visual.tokenizer import VisualTokenizer

SPEC = EncoderSpec(name="s3d", fps=10.0, clip_len=8, frame_size=(24, 32), feature_dim=1024)


def clustered_features(n=600, dim=1024, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(9, dim, generator=gen) * 3
    return centres[torch.randint(0, 9, (n,), generator=gen)] + torch.randn(n, dim, generator=gen) * 0.3


@pytest.fixture(scope="module")
def codebook() -> Codebook:
    fit = fit_hierarchical_kmeans(clustered_features(), depth=2, branching=3, seed=0)
    return Codebook.from_fit(fit, SPEC)


def test_shape_and_metadata(codebook):
    assert (codebook.depth, codebook.branching, codebook.num_leaves) == (2, 3, 9)
    assert codebook.leaf_centroids().shape == (9, 1024)
    assert codebook.feature_count == 600 and codebook.seed == 0 and len(codebook.inertia) == 2
    assert len(codebook.hash) == 16
    ids = codebook.assign(clustered_features(50, seed=1))
    assert ids.dtype == torch.long and ids.shape == (50,) and int(ids.min()) >= 0 and int(ids.max()) < 9


def test_round_trip_keeps_hash_and_assignments(codebook, tmp_path):
    path = codebook.save(tmp_path)
    assert path == tmp_path / CODEBOOK_FILE
    loaded = Codebook.load(tmp_path)
    assert loaded.hash == codebook.hash and loaded.spec == SPEC
    assert (loaded.seed, loaded.feature_count) == (codebook.seed, codebook.feature_count)
    assert loaded.inertia == codebook.inertia
    features = clustered_features(200, seed=2)
    assert torch.equal(loaded.assign(features), codebook.assign(features))
    assert torch.equal(loaded.assign(features.numpy()), codebook.assign(features))
    assert not list(tmp_path.glob("*.partial"))


def test_file_is_safetensors_with_json_metadata(codebook, tmp_path):
    from safetensors import safe_open

    path = codebook.save(tmp_path / "book.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["codebook"])
        assert sorted(f.keys()) == ["level_0", "level_1"]
    assert meta["format"] == "videobert-codebook" and meta["format_version"] == 1
    assert meta["encoder"] == {"name": "s3d", "fps": 10.0, "clip_len": 8, "frame_size": [24, 32], "feature_dim": 1024}
    assert (meta["depth"], meta["branching"], meta["num_leaves"], meta["hash"]) == (2, 3, 9, codebook.hash)


def test_hash_follows_content(codebook):
    moved = [c.clone() for c in codebook.centroids]
    moved[1][0, 0, 0] += 1e-3
    assert Codebook(spec=SPEC, centroids=moved).hash != codebook.hash
    other_encoder = EncoderSpec(name="s3d", fps=20.0, clip_len=8, frame_size=(24, 32), feature_dim=1024)
    assert Codebook(spec=other_encoder, centroids=codebook.centroids).hash != codebook.hash
    # Bookkeeping that does not change any token does not change the hash.
    assert Codebook(spec=SPEC, centroids=codebook.centroids, seed=99).hash == codebook.hash


def test_same_seed_same_hash(tmp_path):
    features = clustered_features(120, dim=1024, seed=3)
    a = Codebook.from_fit(fit_hierarchical_kmeans(features, depth=2, branching=3, seed=5), SPEC)
    b = Codebook.from_fit(fit_hierarchical_kmeans(features, depth=2, branching=3, seed=5), SPEC)
    assert a.hash == b.hash


def test_damaged_missing_and_foreign_files(codebook, tmp_path):
    path = codebook.save(tmp_path / "book.safetensors")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the last centroid
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(bytes(data))
    with pytest.raises(CodebookError, match="damaged"):
        Codebook.load(damaged)
    with pytest.raises(CodebookError, match="no codebook file"):
        Codebook.load(tmp_path / "absent")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a codebook at all")
    with pytest.raises(CodebookError, match="not a codebook file"):
        Codebook.load(junk)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CodebookError, match="without codebook metadata"):
        Codebook.load(tmp_path / "plain.safetensors")


@pytest.mark.parametrize(
    "clips,expected",
    [
        ({"fps": 20.0, "clip_len": 8, "frame_size": (24, 32)}, r"fps 20 \(expected 10\)"),
        ({"fps": 10.0, "clip_len": 30, "frame_size": (24, 32)}, r"clip length 30 frames \(expected 8\)"),
        ({"fps": 10.0, "clip_len": 8, "frame_size": (224, 224)}, r"frame size \(224, 224\) \(expected \(24, 32\)\)"),
    ],
)
def test_clips_prepared_otherwise_are_refused(codebook, clips, expected):
    with pytest.raises(CodebookError, match=expected):
        codebook.check_clips(**clips, where="shard-000003.tar")
    codebook.check_clips(fps=10.0, clip_len=8, frame_size=(24, 32))


def test_tokens_of_another_codebook_are_refused(codebook):
    codebook.check_hash(codebook.hash)
    with pytest.raises(CodebookError, match="made with codebook 0123456789abcdef"):
        codebook.check_hash("0123456789abcdef", where="tokens/shard-000000.tar")


# ---------------------------------------------------------------------------------------------
# The tokenizer (S3D with random weights, small clips)


@pytest.fixture(scope="module")
def s3d_weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "s3d.pth"
    torch.save(S3D().state_dict(), path)
    return path


def random_clips(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 8, 24, 32, 3), generator=gen, dtype=torch.uint8)


def test_tokenizer_from_codebook(s3d_weights, tmp_path):
    from videobert.models.visual.encoder import build_encoder

    encoder = build_encoder("s3d", weights=str(s3d_weights), fps=10, clip_len=8, frame_size=(24, 32))
    features = encoder(random_clips(12, seed=0))
    book = Codebook.from_fit(fit_hierarchical_kmeans(features, depth=2, branching=2, seed=0), encoder.spec)
    book.save(tmp_path)
    # The codebook's spec (fps, clip length, frame size) configures the rebuilt encoder.
    tokenizer = VisualTokenizer.from_codebook(tmp_path, weights=str(s3d_weights))
    assert tokenizer.num_leaves == 4 and tokenizer.codebook_hash == book.hash
    clips = random_clips(6, seed=1)
    ids = tokenizer(clips)
    assert ids.shape == (6,) and ids.dtype == torch.long
    assert torch.equal(ids, book.assign(encoder(clips)))
    assert torch.equal(ids, tokenizer(clips))  # deterministic
    assert torch.equal(tokenizer(clips[3:]), ids[3:])  # a clip's token does not depend on its batch


def test_tokenizer_refuses_another_encoder(codebook, s3d_weights):
    from videobert.models.visual.encoder import build_encoder

    encoder = build_encoder("s3d", weights=str(s3d_weights), fps=10, clip_len=10, frame_size=(24, 32))
    with pytest.raises(CodebookError, match="10 frames.*does not match codebook"):
        VisualTokenizer(encoder, codebook)


def test_features_of_the_wrong_width_are_refused(codebook):
    with pytest.raises(CodebookError, match=r"\(N, 1024\)"):
        codebook.assign(np.zeros((3, 64), dtype=np.float32))
