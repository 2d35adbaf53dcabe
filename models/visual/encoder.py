"""Clip encoders: a batch of clips in, one feature vector per clip out.

Every encoder takes uint8 RGB clips shaped (B, T, H, W, 3), exactly as clip shards store them, and
returns float32 features (B, D). Each one states what input it expects (frame rate, clip length,
frame size); the codebook records that identity and refuses clips prepared differently.

Concrete encoders register themselves in ``ENCODERS`` under their name; ``build_encoder`` builds one
by name with its options (e.g. the weights file of S3D).
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn


@dataclass(frozen=True, kw_only=True)
class EncoderSpec:
    """What an encoder is and what input it expects. Stored in every codebook file."""

    name: str
    fps: float
    clip_len: int
    frame_size: tuple[int, int]
    """(height, width) of the frames it takes."""
    feature_dim: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["frame_size"] = list(self.frame_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EncoderSpec":
        d = dict(d)
        d["frame_size"] = tuple(int(x) for x in d["frame_size"])
        return cls(**d)

    def mismatches(self, *, fps: float, clip_len: int, frame_size: tuple[int, int]) -> list[str]:
        """Human-readable differences between this spec and how some clips were prepared."""
        out = []
        if abs(self.fps - fps) > 1e-6:
            out.append(f"fps {fps:g} (expected {self.fps:g})")
        if self.clip_len != clip_len:
            out.append(f"clip length {clip_len} frames (expected {self.clip_len})")
        if tuple(self.frame_size) != tuple(frame_size):
            out.append(f"frame size {tuple(frame_size)} (expected {tuple(self.frame_size)})")
        return out


class ClipEncoder(nn.Module):
    """Base class: subclasses set ``spec`` and implement ``encode``. Frozen: no gradients flow."""

    spec: EncoderSpec

    def encode(self, clips: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        # clips: (B, T, H, W, 3) uint8 -> (B, D) float32
        if clips.dtype != torch.uint8 or clips.ndim != 5 or clips.shape[-1] != 3:
            raise ValueError(f"{self.spec.name}: expected uint8 clips (B, T, H, W, 3), got {clips.dtype} {tuple(clips.shape)}")
        wrong = self.spec.mismatches(fps=self.spec.fps, clip_len=clips.shape[1], frame_size=tuple(clips.shape[2:4]))
        if wrong:
            raise ValueError(f"{self.spec.name}: clips have " + ", ".join(wrong))
        return self.encode(clips).float()


ENCODERS: dict[str, Callable[..., ClipEncoder]] = {}


def register_encoder(name: str):
    """Class decorator: make an encoder buildable by name."""

    def wrap(factory):
        ENCODERS[name] = factory
        return factory

    return wrap


def build_encoder(name: str, **options: Any) -> ClipEncoder:
    """An encoder by registered name, e.g. ``build_encoder("s3d", weights="s3d_kinetics400.pt")``."""
    _import_builtin_encoders()
    if name not in ENCODERS:
        raise ValueError(f"unknown clip encoder {name!r}; choose one of {sorted(ENCODERS)}")
    encoder = ENCODERS[name](**options)
    return encoder.eval().requires_grad_(False)


BUILTIN_ENCODER_MODULES = ("videobert.models.visual.s3d", "videobert.models.visual.synthetic")
"""Modules that register the built-in encoders when imported (they import this module's
``register_encoder``, so they are imported on first use rather than at the top of this module)."""


def _import_builtin_encoders() -> None:
    for module in BUILTIN_ENCODER_MODULES:
        importlib.import_module(module)
