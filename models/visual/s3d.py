"""S3D (Xie et al., "Rethinking Spatiotemporal Feature Learning", ECCV 2018), the paper's clip encoder.

The network has the architecture of torchvision's ``s3d`` and the same state-dict names, so the
Kinetics-400 checkpoint published for it (``S3D_Weights.KINETICS400_V1``, file
``s3d-d76dad2f.pth``) loads as is. It is written here because torchvision is not installable next
to every torch build.

The encoder registered as ``"s3d"`` (``build_encoder("s3d", weights=PATH)``):

- input: uint8 clips (B, T, H, W, 3) as clip shards store them, scaled to [0, 1] and normalised
  with the checkpoint's mean (0.43216, 0.394666, 0.37645) and std (0.22803, 0.22145, 0.216989),
  reordered to (B, C, T, H, W);
- output: the 1024-d activations after the final average pooling and before the classifier
  (averaged over the pooled positions, exactly what the classifier's logits are averaged over);
- spec: the paper's 20 fps, 30-frame clips of 224 x 224 by default (all configurable: smaller
  frames pool over the whole final feature map instead of torchvision's fixed 2 x 7 x 7 window).

The weights file is read with ``torch.load(weights_only=True)`` (no pickle code runs) or as
safetensors; a missing file, a file that is not a checkpoint, or a checkpoint of another network
gets an error naming the file and the missing, unexpected or mis-shaped entries.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from videobert.models.errors import VideoBertError
from videobert.models.visual.encoder import ClipEncoder, EncoderSpec, register_encoder

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
FEATURE_DIM = 1024
_POOL_WINDOW = (2, 7, 7)
# (in, branch0, branch1 mid/out, branch2 mid/out, branch3) of the nine separable inception blocks.
_BLOCKS = {
    5: (192, 64, 96, 128, 16, 32, 32), 6: (256, 128, 128, 192, 32, 96, 64),
    8: (480, 192, 96, 208, 16, 48, 64), 9: (512, 160, 112, 224, 24, 64, 64),
    10: (512, 128, 128, 256, 24, 64, 64), 11: (512, 112, 144, 288, 32, 64, 64),
    12: (528, 256, 160, 320, 32, 128, 128), 14: (832, 256, 160, 320, 32, 128, 128),
    15: (832, 384, 192, 384, 48, 128, 128),
}


class S3DWeightsError(VideoBertError, ValueError):
    """The S3D weights file is missing, unreadable, or not an S3D checkpoint."""


def _conv_bn_relu(c_in: int, c_out: int, kernel, stride=1, padding=0) -> nn.Sequential:
    # Children 0/1/2 = conv/bn/relu: the names torchvision's Conv3dNormActivation gives them.
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm3d(c_out, eps=1e-3, momentum=1e-3),
        nn.ReLU(inplace=True),
    )


def _separable_conv(c_in: int, c_out: int, size: int, stride: int, pad: int) -> nn.Sequential:
    """A (1, s, s) spatial convolution followed by an (s, 1, 1) temporal one."""
    return nn.Sequential(
        _conv_bn_relu(c_in, c_out, (1, size, size), (1, stride, stride), (0, pad, pad)),
        _conv_bn_relu(c_out, c_out, (size, 1, 1), (stride, 1, 1), (pad, 0, 0)),
    )


class SeparableInception(nn.Module):
    """Inception block with separable 3x3x3 convolutions; output channels b0 + b1 + b2 + b3."""

    def __init__(self, c_in: int, b0: int, b1_mid: int, b1: int, b2_mid: int, b2: int, b3: int):
        super().__init__()
        self.branch0 = _conv_bn_relu(c_in, b0, 1)
        self.branch1 = nn.Sequential(_conv_bn_relu(c_in, b1_mid, 1), _separable_conv(b1_mid, b1, 3, 1, 1))
        self.branch2 = nn.Sequential(_conv_bn_relu(c_in, b2_mid, 1), _separable_conv(b2_mid, b2, 3, 1, 1))
        self.branch3 = nn.Sequential(nn.MaxPool3d(3, stride=1, padding=1), _conv_bn_relu(c_in, b3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], dim=1)


def s3d_features() -> nn.Sequential:
    """The convolutional trunk (torchvision's ``S3D.features``): (B, 3, T, H, W) -> (B, 1024, T', H', W')."""
    layers: list[nn.Module] = [
        _separable_conv(3, 64, 7, 2, 3),
        nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        _conv_bn_relu(64, 64, 1),
        _separable_conv(64, 192, 3, 1, 1),
        nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
    ]
    for index in range(5, 16):
        if index == 7:
            layers.append(nn.MaxPool3d(3, stride=2, padding=1))
        elif index == 13:
            layers.append(nn.MaxPool3d(2, stride=2))
        else:
            layers.append(SeparableInception(*_BLOCKS[index]))
    return nn.Sequential(*layers)


def pool_features(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, 1024, T', H', W') -> (B, 1024): torchvision's 2x7x7 stride-1 average pooling (its window
    clipped to the map for small inputs), then the mean over the pooled positions."""
    window = tuple(min(w, s) for w, s in zip(_POOL_WINDOW, feature_map.shape[2:]))
    return F.avg_pool3d(feature_map, window, stride=1).mean(dim=(2, 3, 4))


class S3D(nn.Module):
    """The whole classification network, state-dict compatible with torchvision's ``S3D``."""

    def __init__(self, num_classes: int = 400, dropout: float = 0.2):
        super().__init__()
        self.features = s3d_features()
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Conv3d(FEATURE_DIM, num_classes, 1, bias=True))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) normalised video -> (B, 1024) features before the classifier."""
        return pool_features(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The classifier is a 1x1x1 convolution, so averaging its outputs over positions equals
        # applying it to the averaged features.
        features = self.pooled(x)  # (B, 1024)
        return self.classifier(features[:, :, None, None, None]).flatten(1)


def min_input_size() -> tuple[int, int]:
    """Smallest (frames, pixels per side) the trunk's strides leave at least one position for."""
    return 5, 9


@register_encoder("s3d")
class S3DEncoder(ClipEncoder):
    """Frozen S3D trunk: uint8 clips (B, T, H, W, 3) -> (B, 1024) features. Needs ``weights``."""

    def __init__(
        self, weights: str | Path | None = None, *, fps: float = 20.0, clip_len: int = 30,
        frame_size: tuple[int, int] = (224, 224),
    ):
        super().__init__()
        min_frames, min_pixels = min_input_size()
        if clip_len < min_frames or min(frame_size) < min_pixels:
            raise ValueError(
                f"s3d: clips of {clip_len} frames of {tuple(frame_size)} pixels are too small; "
                f"it needs at least {min_frames} frames of {min_pixels}x{min_pixels}"
            )
        if weights is None:
            raise S3DWeightsError(
                "s3d needs its weights: pass weights=PATH (CLI: --encoder-weights PATH), the Kinetics-400 "
                "S3D checkpoint of torchvision (s3d-d76dad2f.pth) or a safetensors copy of it"
            )
        self.spec = EncoderSpec(
            name="s3d", fps=float(fps), clip_len=int(clip_len), frame_size=tuple(frame_size), feature_dim=FEATURE_DIM
        )
        self.features = s3d_features()
        self.register_buffer("mean", torch.tensor(KINETICS_MEAN).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(KINETICS_STD).view(1, 3, 1, 1, 1), persistent=False)
        self.features.load_state_dict(_trunk_weights(self.features, Path(weights)))

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        # (B, T, H, W, 3) uint8 -> (B, 3, T, H, W) float, normalised as the checkpoint was trained
        video = clips.permute(0, 4, 1, 2, 3).float().div_(255.0)
        video = (video - self.mean) / self.std
        return pool_features(self.features(video))


# ---------------------------------------------------------------------------------------------
# Weights files


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .pt/.pth (``weights_only``) or .safetensors file; clear errors otherwise."""
    if not path.is_file():
        raise S3DWeightsError(f"s3d weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for a non-checkpoint file; all mean the same
        raise S3DWeightsError(
            f"s3d weights file {path} is not a PyTorch or safetensors checkpoint ({type(e).__name__}: {e})"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise S3DWeightsError(f"s3d weights file {path} does not hold a state dict (name -> tensor)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _trunk_weights(trunk: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """The ``features.*`` entries of a checkpoint, checked against the trunk (names and shapes)."""
    state = read_checkpoint(path)
    expected = {f"features.{k}": v for k, v in trunk.state_dict().items()}
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected and not k.startswith("classifier.")]
    mis_shaped = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items() if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or mis_shaped:
        listing = _listing(missing, unexpected, mis_shaped)
        raise S3DWeightsError(f"s3d weights file {path} does not match the S3D network: {listing}")
    trunk_state = {k.removeprefix("features."): state[k] for k in expected if k in state}
    for k, v in trunk.state_dict().items():
        trunk_state.setdefault(k, v)  # BatchNorm's num_batches_tracked is unused in eval
    return trunk_state


def _listing(missing: list[str], unexpected: list[str], mis_shaped: list[str], shown: int = 8) -> str:
    parts = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)):
        if names:
            more = f" and {len(names) - shown} more" if len(names) > shown else ""
            parts.append(f"{len(names)} {label}: " + ", ".join(names[:shown]) + more)
    return "; ".join(parts)
