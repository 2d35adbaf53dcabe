"""S3D: torchvision-compatible architecture and names, weights files, input normalisation."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from videobert.models.visual.encoder import build_encoder
from videobert.models.visual.s3d import KINETICS_MEAN, KINETICS_STD, S3D, S3DWeightsError, pool_features

SMALL = {"clip_len": 8, "frame_size": (24, 32)}


@pytest.fixture(scope="module")
def network() -> S3D:
    torch.manual_seed(0)
    net = S3D().eval()
    # Non-trivial BatchNorm statistics, so a loader that skipped them would give other features.
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return net


@pytest.fixture(scope="module")
def weights_file(network, tmp_path_factory):
    path = tmp_path_factory.mktemp("s3d") / "s3d_kinetics400.pth"
    torch.save(network.state_dict(), path)
    return path


def clips(batch=2, seed=0, clip_len=8, size=(24, 32)):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, clip_len, *size, 3), generator=gen, dtype=torch.uint8)


def test_architecture_matches_torchvision_s3d(network):
    names = network.state_dict()
    # torchvision's S3D: 8,320,048 parameters for 400 classes; these names are in its checkpoint.
    assert sum(p.numel() for p in network.parameters()) == 8_320_048
    for name in ("features.0.0.0.weight", "features.0.1.1.running_var", "features.5.branch1.1.0.0.weight",
                 "features.15.branch3.1.1.num_batches_tracked", "classifier.1.weight", "classifier.1.bias"):
        assert name in names
    assert names["features.0.0.0.weight"].shape == (64, 3, 1, 7, 7)
    assert names["features.0.1.0.weight"].shape == (64, 64, 7, 1, 1)
    assert names["classifier.1.weight"].shape == (400, 1024, 1, 1, 1)


def test_pooling_is_torchvisions_at_full_size():
    feature_map = torch.randn(2, 1024, 4, 7, 7)  # what 30 frames of 224 x 224 give
    torchvision_way = torch.nn.AvgPool3d((2, 7, 7), stride=1)(feature_map).mean(dim=(2, 3, 4))
    torch.testing.assert_close(pool_features(feature_map), torchvision_way)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_encoder_loads_weights_and_normalises_like_the_checkpoint(network, weights_file, tmp_path, suffix):
    path = weights_file
    if suffix == ".safetensors":
        path = tmp_path / "s3d.safetensors"
        save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(path))
    encoder = build_encoder("s3d", weights=str(path), fps=10, **SMALL)
    assert encoder.spec.feature_dim == 1024 and encoder.spec.clip_len == 8 and encoder.spec.fps == 10
    batch = clips()
    features = encoder(batch)
    assert features.shape == (2, 1024) and features.dtype == torch.float32
    # By hand: [0, 1], Kinetics mean/std, (B, C, T, H, W), trunk, pooling.
    video = batch.permute(0, 4, 1, 2, 3).float() / 255
    video = (video - torch.tensor(KINETICS_MEAN).view(1, 3, 1, 1, 1)) / torch.tensor(KINETICS_STD).view(1, 3, 1, 1, 1)
    with torch.no_grad():
        expected = network.pooled(video)
        logits = network(video)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)
    # The features are what the classifier reads: its logits follow from them.
    head = network.classifier[1]
    torch.testing.assert_close(features @ head.weight.flatten(1).T + head.bias, logits, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(features[0], features[1])


def test_default_spec_is_the_papers(weights_file):
    encoder = build_encoder("s3d", weights=str(weights_file))
    assert (encoder.spec.fps, encoder.spec.clip_len, encoder.spec.frame_size) == (20.0, 30, (224, 224))
    with pytest.raises(ValueError, match="clip length 8 frames"):
        encoder(clips())


def test_missing_or_unreadable_weights(tmp_path):
    with pytest.raises(S3DWeightsError, match="needs its weights"):
        build_encoder("s3d", **SMALL)
    with pytest.raises(S3DWeightsError, match="does not exist"):
        build_encoder("s3d", weights=str(tmp_path / "absent.pth"), **SMALL)
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights")
    with pytest.raises(S3DWeightsError, match="not a PyTorch or safetensors checkpoint"):
        build_encoder("s3d", weights=str(text), **SMALL)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(S3DWeightsError, match="does not hold a state dict"):
        build_encoder("s3d", weights=str(tmp_path / "list.pth"), **SMALL)


def test_mismatching_checkpoint_lists_what_differs(network, tmp_path):
    state = dict(network.state_dict())
    del state["features.15.branch0.0.weight"]
    state["features.16.extra.weight"] = torch.zeros(3)
    state["features.0.0.0.weight"] = torch.zeros(64, 3, 1, 5, 5)
    path = tmp_path / "other.pth"
    torch.save({"state_dict": state}, path)  # wrapped checkpoints are unwrapped first
    with pytest.raises(S3DWeightsError) as error:
        build_encoder("s3d", weights=str(path), **SMALL)
    message = str(error.value)
    assert "1 missing: features.15.branch0.0.weight" in message
    assert "1 unexpected: features.16.extra.weight" in message
    assert "features.0.0.0.weight (64, 3, 1, 5, 5) (expected (64, 3, 1, 7, 7))" in message


def test_too_small_clips_are_refused(weights_file):
    with pytest.raises(ValueError, match="too small"):
        build_encoder("s3d", weights=str(weights_file), clip_len=4, frame_size=(32, 32))
