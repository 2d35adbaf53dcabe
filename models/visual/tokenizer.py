"""The visual tokenizer: uint8 clips in, visual-word ids out (frozen clip encoder + codebook).

This is what turns pixels into the video half of VideoBERT's vocabulary: the tokenize stage runs it
over clip shards, and the trainer can run it inside the training step when it streams clip shards.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from videobert.models.visual.codebook import Codebook
from videobert.models.visual.encoder import ENCODERS, ClipEncoder, _import_builtin_encoders, build_encoder
from videobert.models.visual.kmeans import assign_hierarchical


class VisualTokenizer(nn.Module):
    """A clip encoder and the codebook fitted on its features. Frozen; no gradients.

    ``tokenizer(clips)`` maps uint8 clips (B, T, H, W, 3) to leaf ids (B,) int64 in
    [0, ``num_leaves``). The clips are moved to the tokenizer's device first.
    """

    def __init__(self, encoder: ClipEncoder, codebook: Codebook):
        super().__init__()
        codebook.check_encoder(encoder.spec)
        self.encoder = encoder.eval().requires_grad_(False)
        self.codebook = codebook
        for level, centroids in enumerate(codebook.centroids):
            # Buffers, so .to(device) moves the tree with the encoder; not persistent: the codebook
            # file is the source of truth, identified by its hash.
            self.register_buffer(f"level_{level}", centroids.clone(), persistent=False)

    @classmethod
    def from_codebook(cls, path: str | Path, **encoder_options: Any) -> "VisualTokenizer":
        """Load a codebook and build the encoder it names, e.g. ``from_codebook(p, weights="s3d.pt")``.

        Options the encoder accepts for its input spec (``fps``, ``clip_len``, ``frame_size``) are
        taken from the codebook unless given, so an encoder configured off its defaults is rebuilt
        the way the codebook saw it.
        """
        codebook = Codebook.load(path)
        options = _spec_options(codebook, encoder_options)
        return cls(build_encoder(codebook.spec.name, **options), codebook)

    @property
    def num_leaves(self) -> int:
        return self.codebook.num_leaves

    @property
    def codebook_hash(self) -> str:
        return self.codebook.hash

    def _levels(self) -> list[torch.Tensor]:
        return [getattr(self, f"level_{level}") for level in range(self.codebook.depth)]

    @property
    def device(self) -> torch.device:
        return self.level_0.device

    @torch.no_grad()
    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        """Encoder features (B, D) float32 of uint8 clips (B, T, H, W, 3)."""
        return self.encoder(clips.to(self.device))

    @torch.no_grad()
    def assign(self, features: torch.Tensor) -> torch.Tensor:
        """Leaf ids (B,) of features (B, D)."""
        return assign_hierarchical(features.to(self.device, torch.float32), self._levels())

    @torch.no_grad()
    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        # (B, T, H, W, 3) uint8 -> (B, D) float32 -> (B,) int64
        return self.assign(self.encode(clips))

    def tokenize_frames(self, frames: np.ndarray) -> np.ndarray:
        """Visual-word ids (n_clips,) int64 on the CPU of a sample's frames (n_clips, T, H, W, 3) uint8."""
        return self(torch.from_numpy(np.ascontiguousarray(frames))).cpu().numpy().astype(np.int64)


def _spec_options(codebook: Codebook, options: dict[str, Any]) -> dict[str, Any]:
    _import_builtin_encoders()
    factory = ENCODERS.get(codebook.spec.name)
    if factory is None:
        return dict(options)  # build_encoder names the known encoders in its error
    accepted = inspect.signature(factory).parameters
    filled = dict(options)
    spec = codebook.spec
    for name, value in (("fps", spec.fps), ("clip_len", spec.clip_len), ("frame_size", tuple(spec.frame_size))):
        if name in accepted and name not in filled:
            filled[name] = value
    return filled
