"""Frozen features of labelled segments: VideoBERT's, as the paper takes them for captioning, and the
clip encoder's.

VideoBERT features (Sun et al. 2019, section 4.3): the pretrained model reads a segment's video
tokens after a fill-in-the-blank sentence,

    [CLS] now let's [MASK] the [MASK] to the [MASK], and then [MASK] the [MASK]. [>] video [SEP]

and the last layer's outputs at the video tokens and at the masked text positions are each averaged;
the feature is the two averages side by side, (2 H,). The masks ask the model what is being done to
what, so their outputs carry its reading of the video in the language it learned.

Encoder features: a segment's clip-encoder features averaged over its clips, (D,); from token
shards written with ``tokenize --keep-features`` or, for clip shards, computed by the codebook's
encoder (the paper's "S3D" row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from videobert.models.errors import VideoBertError
from videobert.models.vocab import JOINT_SPECIAL_COUNT, JointVocab, fit_lengths
from videobert.shards import reader, schema
from videobert.trainer.evaluation.heldout import sample_tokens

CAPTION_TEMPLATE = "now let's [MASK] the [MASK] to the [MASK], and then [MASK] the [MASK]."
"""The paper's sentence for captioning features."""


@dataclass(frozen=True)
class FeaturePrompt:
    """The template as WordPiece ids and where its masks are (indices into ``text_ids``; add 1 for
    the position after ``[CLS]``)."""

    text_ids: tuple[int, ...]
    mask_at: tuple[int, ...]


def feature_prompt(tokenizer: Any, mask_id: int, template: str = CAPTION_TEMPLATE) -> FeaturePrompt:
    """``template`` tokenized; ``[MASK]`` in it is the tokenizer's mask token."""
    ids = tuple(tokenizer(template, add_special_tokens=False)["input_ids"])
    mask_at = tuple(i for i, t in enumerate(ids) if t == mask_id)
    if not mask_at:
        raise VideoBertError(f"the feature template {template!r} holds no [MASK]")
    return FeaturePrompt(text_ids=ids, mask_at=mask_at)


@dataclass
class LabelledSegment:
    """A segment with a reference caption: where it comes from, its visual words, its encoder feature."""

    key: str
    video: str
    start: float
    end: float
    caption: str
    tokens: np.ndarray
    """(n_clips,) int64 codebook leaf ids."""
    encoder: np.ndarray | None
    """(D,) float32 mean clip-encoder feature, or None when the shards hold none."""


def read_segments(urls: Sequence[str], visual: Any = None, on_error: Callable[[str, Exception], None] | None = None,
                  limit: int | None = None) -> list[LabelledSegment]:
    """The readable samples of ``urls`` (token or clip shards) as labelled segments, at most ``limit``."""
    out = []
    for sample in reader.iter_samples(urls, on_error=on_error):
        if limit is not None and len(out) >= limit:
            break
        out.append(LabelledSegment(key=sample.key, video=sample.meta.video_id, start=sample.meta.start,
                                   end=sample.meta.end, caption=sample.text.strip(), tokens=sample_tokens(sample, visual),
                                   encoder=_encoder_feature(sample, visual)))
    return out


def _encoder_feature(sample: schema.Sample, visual: Any) -> np.ndarray | None:
    if sample.features is not None:
        return np.asarray(sample.features, np.float32).mean(axis=0)
    if sample.meta.kind == schema.CLIP_KIND and visual is not None:
        with torch.no_grad():
            return visual.encode(torch.from_numpy(sample.frames)).float().mean(dim=0).cpu().numpy()
    return None


def encoder_matrix(segments: Sequence[LabelledSegment]) -> np.ndarray | None:
    """(N, D) encoder features, or None unless every segment has one."""
    if not segments or any(s.encoder is None for s in segments):
        return None
    return np.stack([s.encoder for s in segments]).astype(np.float32)


def prompt_rows(vocab: JointVocab, prompt: FeaturePrompt, video: np.ndarray, max_seq_len: int) -> tuple[list[int], list[int], int]:
    """(ids, token types, video tokens kept) of ``[CLS] template [>] video [SEP]``; only the video is cut."""
    n_text, n_video = fit_lengths(len(prompt.text_ids), len(video), max_seq_len - JOINT_SPECIAL_COUNT)
    if n_text < len(prompt.text_ids) or n_video < 1:
        raise VideoBertError(f"max_seq_len {max_seq_len} cannot hold the feature template ({len(prompt.text_ids)} "
                           "tokens) and a video token: raise it")
    ids, types = vocab.joint_sequence(prompt.text_ids, [int(v) for v in video[:n_video]])
    return ids, types, n_video


@torch.no_grad()
def videobert_features(model: torch.nn.Module, vocab: JointVocab, prompt: FeaturePrompt, videos: Sequence[np.ndarray],
                       *, max_seq_len: int, device: torch.device | str = "cpu", batch_size: int = 64) -> np.ndarray:
    """(N, 2 H) float32: per video, the mean output at its video tokens, then at the template's masks."""
    chunks = []
    for start in range(0, len(videos), batch_size):
        chunks.append(_feature_batch(model, vocab, prompt, videos[start : start + batch_size], max_seq_len, device))
    hidden = getattr(model.config, "hidden_size", 0)
    return np.concatenate(chunks) if chunks else np.zeros((0, 2 * hidden), np.float32)


def _feature_batch(model, vocab: JointVocab, prompt: FeaturePrompt, videos: Sequence[np.ndarray], max_seq_len: int,
                   device) -> np.ndarray:
    rows = [prompt_rows(vocab, prompt, v, max_seq_len) for v in videos]
    width = max(len(ids) for ids, _, _ in rows)
    input_ids = torch.full((len(rows), width), vocab.pad_id, dtype=torch.long)
    types, attention = torch.zeros_like(input_ids), torch.zeros_like(input_ids)
    video_weight = torch.zeros(len(rows), width)
    for i, (ids, tt, n_video) in enumerate(rows):
        input_ids[i, : len(ids)], types[i, : len(ids)], attention[i, : len(ids)] = torch.tensor(ids), torch.tensor(tt), 1
        first = len(prompt.text_ids) + 2  # after [CLS] text [>]
        video_weight[i, first : first + n_video] = 1.0 / n_video
    hidden = model.encode(input_ids.to(device), types.to(device), attention.to(device)).float().cpu()  # (B, T, H)
    at_video = torch.einsum("bt,bth->bh", video_weight, hidden)
    at_masks = hidden[:, [1 + m for m in prompt.mask_at]].mean(dim=1)  # (B, H)
    return torch.cat([at_video, at_masks], dim=1).numpy()
