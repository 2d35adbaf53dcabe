"""Text-to-video and video-to-text with a trained model, and pictures of both (and of captioned segments).

Text-to-video (``fill_video``): the sentence is followed by masks, ``[CLS] sentence [>] [MASK] x L
[SEP]``, which are filled one at a time: each step predicts every still-masked position over the
visual words only and writes in the single most confident (position, visual word), until none is
left. A visual word is a codebook leaf, so it is shown by a representative clip (``nearest_clips``):
among the clips of some clip shards, the one whose encoder feature lies nearest to the leaf's
centroid (Euclidean distance, as k-means assigns). ``text_to_video_grid`` draws one row per sentence.

Video-to-text (``video_to_text``): a clip sample's frames become visual words through the codebook,
and the most likely words at the masks of the zero-shot template are listed, over the whole text
vocabulary (whole words only: no ``[...]`` special tokens, no ``##`` word continuations).
``video_to_text_grid`` draws each clip beside its caption and the predicted words; ``caption_grid``
draws held-out segments beside their reference and each captioner's sentence
(``trainer.evaluation.captioning.command``), ``retrieval_grid`` captions beside the videos they retrieve
(``trainer.evaluation.retrieval``).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from videobert.models.vocab import JointVocab
from videobert.shards import reader, schema
from videobert.trainer.evaluation.zeroshot import PAPER_TEMPLATE, build_prompt, mask_log_probs

THUMB = 64
"""Side of a frame thumbnail, in pixels."""
FRAMES_PER_CLIP = 3
_MARGIN = 6
_TEXT_WIDTH = 230


@torch.no_grad()
def fill_video(model: torch.nn.Module, tokenizer: Any, vocab: JointVocab, sentence: str, length: int,
               device: torch.device | str = "cpu") -> list[int]:
    """Codebook leaf ids of ``length`` video tokens predicted for ``sentence`` (see module doc)."""
    text = tokenizer(sentence, add_special_tokens=False)["input_ids"]
    ids, types = vocab.joint_sequence(text, [0] * length)
    ids = torch.tensor([ids], device=device)
    types = torch.tensor([types], device=device)
    first = len(text) + 2
    masked = list(range(first, first + length))
    ids[0, masked] = vocab.mask_id
    visual = slice(vocab.visual_offset, vocab.size)
    while masked:
        hidden = model.encode(ids, types)
        probs = torch.softmax(model.mlm_logits(hidden[0, masked])[:, visual].float(), dim=-1)  # (masked, visual words)
        best, word = probs.max(dim=-1)
        pick = int(best.argmax())
        ids[0, masked[pick]] = vocab.visual_offset + int(word[pick])
        masked.pop(pick)
    return [int(i) - vocab.visual_offset for i in ids[0, first : first + length]]


@dataclass
class ClipPick:
    """A clip shown for a visual word, or a clip whose words are read."""

    key: str
    text: str
    frames: np.ndarray
    """(T, H, W, 3) uint8 for one clip; (n_clips, T, H, W, 3) for a sample."""
    distance: float = 0.0
    tokens: np.ndarray | None = None


def nearest_clips(leaves: Iterable[int], samples: Iterable[schema.Sample], visual: Any) -> dict[int, ClipPick]:
    """For each leaf id, the clip among ``samples`` (clip samples) nearest to the leaf's centroid."""
    wanted = sorted(set(int(x) for x in leaves))
    centroids = visual.codebook.leaf_centroids()[wanted]  # (W, D)
    best: dict[int, ClipPick] = {}
    for sample in samples:
        features = visual.encode(torch.from_numpy(sample.frames)).cpu()  # (n_clips, D)
        distances = torch.cdist(features, centroids)  # (n_clips, W)
        for column, leaf in enumerate(wanted):
            clip = int(distances[:, column].argmin())
            d = float(distances[clip, column])
            if leaf not in best or d < best[leaf].distance:
                best[leaf] = ClipPick(key=f"{sample.key} clip {clip}", text=sample.text, frames=sample.frames[clip], distance=d)
    return best


def read_clip_samples(urls: Sequence[str], max_clips: int, on_error=None) -> list[schema.Sample]:
    """Clip samples from the start of ``urls`` holding at most ``max_clips`` clips in all."""
    out, clips = [], 0
    for sample in reader.iter_samples(urls, on_error=on_error):
        if sample.meta.kind != schema.CLIP_KIND:
            raise ValueError(f"{sample.key}: pictures need clip shards (with frames), these hold {sample.meta.kind}")
        if clips + sample.meta.n_clips > max_clips:
            break
        out.append(sample)
        clips += sample.meta.n_clips
    return out


def whole_word_ids(tokenizer: Any, text_vocab_size: int) -> torch.Tensor:
    """(text_vocab_size,) bool: True for WordPieces that are whole words."""
    keep = torch.zeros(text_vocab_size, dtype=torch.bool)
    for word, i in tokenizer.get_vocab().items():
        if i < text_vocab_size and not word.startswith(("[", "##")) and word.isalpha():
            keep[i] = True
    return keep


def video_to_text(model: torch.nn.Module, tokenizer: Any, vocab: JointVocab, samples: Sequence[schema.Sample],
                  visual: Any, *, template: str = PAPER_TEMPLATE, k: int = 5, max_seq_len: int = 128,
                  device: torch.device | str = "cpu") -> list[dict[str, Any]]:
    """Per clip sample: its caption and the ``k`` most likely whole words at the template's verb and noun masks."""
    prompt = build_prompt(tokenizer, vocab.mask_id, template)
    allowed = whole_word_ids(tokenizer, vocab.text_vocab_size)
    out = []
    for sample in samples:
        tokens = visual.tokenize_frames(sample.frames)
        lp = mask_log_probs(model, vocab, prompt, [tokens], max_seq_len, torch.device(device))[0]  # (2, V)
        lp[:, ~allowed] = -float("inf")
        words = [tokenizer.convert_ids_to_tokens(lp[m].topk(k).indices.tolist()) for m in range(2)]
        out.append({"key": sample.key, "caption": sample.text, "visual_words": tokens.tolist(),
                    "verb_words": words[0], "noun_words": words[1]})
    return out


# ---------------------------------------------------------------------------------------------
# pictures


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        return ImageFont.load_default()


def _strip(frames: np.ndarray, count: int = FRAMES_PER_CLIP) -> Image.Image:
    """``count`` frames spread over a clip (T, H, W, 3), side by side."""
    picks = np.unique(np.linspace(0, len(frames) - 1, count).round().astype(int))
    strip = Image.new("RGB", (len(picks) * THUMB, THUMB), "white")
    for i, f in enumerate(picks):
        strip.paste(Image.fromarray(frames[f]).resize((THUMB, THUMB), Image.Resampling.BILINEAR), (i * THUMB, 0))
    return strip


def _text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, chars: int, font) -> None:
    draw.multiline_text(xy, "\n".join(textwrap.wrap(text, chars)), fill="black", font=font)


def text_to_video_grid(sentences: Sequence[str], predictions: Sequence[Sequence[int]], clips: dict[int, ClipPick]) -> Image.Image:
    """One row per sentence: the sentence, then each predicted visual word's representative clip."""
    cell_w, cell_h = FRAMES_PER_CLIP * THUMB + _MARGIN, THUMB + 20 + _MARGIN
    columns = max(len(p) for p in predictions)
    image = Image.new("RGB", (_TEXT_WIDTH + columns * cell_w + _MARGIN, len(sentences) * cell_h + _MARGIN), "white")
    draw, font = ImageDraw.Draw(image), _font()
    for row, (sentence, leaves) in enumerate(zip(sentences, predictions)):
        y = _MARGIN + row * cell_h
        _text(draw, (_MARGIN, y), f'"{sentence}"', 34, font)
        for column, leaf in enumerate(leaves):
            x = _TEXT_WIDTH + column * cell_w
            if leaf in clips:
                image.paste(_strip(clips[leaf].frames), (x, y))
            draw.text((x, y + THUMB + 3), JointVocab.visual_word(leaf) + (f" d={clips[leaf].distance:.2f}" if leaf in clips else " (no clip)"),
                      fill="black", font=font)
    return image


def video_to_text_grid(samples: Sequence[schema.Sample], readings: Sequence[dict[str, Any]]) -> Image.Image:
    """One row per clip sample: its first clip's frames, its caption, the predicted words."""
    strip_w, row_h = FRAMES_PER_CLIP * THUMB + _MARGIN, THUMB + 2 * _MARGIN
    image = Image.new("RGB", (strip_w + 2 * _TEXT_WIDTH + 2 * _MARGIN, len(samples) * row_h + _MARGIN), "white")
    draw, font = ImageDraw.Draw(image), _font()
    for row, (sample, reading) in enumerate(zip(samples, readings)):
        y = _MARGIN + row * row_h
        image.paste(_strip(sample.frames[0]), (_MARGIN, y))
        lines = (f'caption: "{reading["caption"]}"', "verb: " + " ".join(reading["verb_words"]),
                 "noun: " + " ".join(reading["noun_words"]))
        draw.multiline_text((strip_w + _MARGIN, y), "\n".join(lines), fill="black", font=font)
    return image


def caption_grid(frames: Sequence[np.ndarray], examples: Sequence[dict[str, Any]], rows: Sequence[str],
                 labels: dict[str, str]) -> Image.Image:
    """One row per segment: its first clip's frames (n_clips, T, H, W, 3), its reference and the
    caption of each of ``rows`` (``examples[i][row]``), labelled by ``labels[row]``."""
    strip_w, line_h = FRAMES_PER_CLIP * THUMB + _MARGIN, 15
    text_w = 3 * _TEXT_WIDTH
    row_h = max(THUMB, line_h * (1 + len(rows))) + 2 * _MARGIN
    image = Image.new("RGB", (strip_w + text_w + 2 * _MARGIN, len(examples) * row_h + _MARGIN), "white")
    draw, font = ImageDraw.Draw(image), _font()
    for i, (clips, example) in enumerate(zip(frames, examples)):
        y = _MARGIN + i * row_h
        image.paste(_strip(clips[0]), (_MARGIN, y))
        lines = [f'reference: "{example["reference"]}"'] + [f'{labels[r]}: "{example[r]}"' for r in rows]
        draw.multiline_text((strip_w + _MARGIN, y), "\n".join(lines), fill="black", font=font, spacing=3)
    return image


def retrieval_grid(examples: Sequence[dict[str, Any]], frames: dict[str, np.ndarray]) -> Image.Image:
    """One row per query caption: the first clip (T, H, W, 3) of each video it retrieved, best
    first, framed green where the retrieval is correct, with the probability of "aligned"."""
    cell_w, row_h = FRAMES_PER_CLIP * THUMB + _MARGIN, THUMB + 20 + 2 * _MARGIN
    columns = max(len(e["retrieved"]) for e in examples)
    image = Image.new("RGB", (_TEXT_WIDTH + columns * cell_w + _MARGIN, len(examples) * row_h + _MARGIN), "white")
    draw, font = ImageDraw.Draw(image), _font()
    for row, example in enumerate(examples):
        y = _MARGIN + row * row_h
        _text(draw, (_MARGIN, y), f'"{example["caption"]}" (first correct: rank {example["rank"]}, ties counted '
              "against it)", 34, font)
        for column, (key, correct, p) in enumerate(zip(example["retrieved"], example["correct"], example["probabilities"])):
            x = _TEXT_WIDTH + column * cell_w
            if key in frames:
                image.paste(_strip(frames[key]), (x, y))
            if correct:
                draw.rectangle((x - 2, y - 2, x + FRAMES_PER_CLIP * THUMB + 1, y + THUMB + 1), outline=(20, 160, 40), width=3)
            draw.text((x, y + THUMB + 3), f"{column + 1}. p={p:.2f}" + (" correct" if correct else ""), fill="black", font=font)
    return image
