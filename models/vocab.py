"""The joint vocabulary: the one definition of how text and visual words share one id space.

Layout of the word table (ids increase downwards):

    [0, text_vocab_size)                       the text WordPiece vocabulary, unchanged
                                               (BERT's own [PAD] [UNK] [CLS] [SEP] [MASK] among them)
    text_vocab_size + i, i < len(EXTRA_TOKENS) the special tokens VideoBERT adds: "[>]" between
                                               text and video
    visual_offset + v, v < num_visual_tokens   visual word v (a codebook leaf), named "[V00042]"
    ... up to size_padded                      unused rows that round the table up to a multiple
                                               of ``pad_to_multiple_of`` (tensor-core friendly);
                                               they never appear in inputs or labels

Sequences follow the paper, with token-type 0 for [CLS] and text and 1 for everything from the
video separator on:

    text-only   [CLS] text [SEP]             types 0 ... 0
    video-only  [CLS] video [SEP]            types 0 1 ... 1
    joint       [CLS] text [>] video [SEP]   types 0 0..0 1 1..1 1
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence


VIDEO_SEP_TOKEN = "[>]"
EXTRA_TOKENS: tuple[str, ...] = (VIDEO_SEP_TOKEN,)
VISUAL_TOKEN_FORMAT = "[V{:05d}]"
VISUAL_TOKEN_PATTERN = re.compile(r"^\[V(\d{5,})\]$")
"""Matches a name written with ``VISUAL_TOKEN_FORMAT``; group 1 is the visual word's number."""
PAD_ROW_FORMAT = "[unused_row_{}]"

TEXT_TYPE = 0
VIDEO_TYPE = 1
IGNORE_INDEX = -100
"""Label value for positions that carry no loss (PyTorch's cross-entropy default)."""
ROW_MULTIPLE = 64
"""The word table's rows are rounded up to a multiple of this (tensor-core friendly)."""


@dataclass(frozen=True, kw_only=True)
class JointVocab:
    """Ids of the joint vocabulary. Build it with ``from_tokenizer`` or from a saved dict."""

    text_vocab_size: int
    num_visual_tokens: int
    cls_id: int
    sep_id: int
    mask_id: int
    pad_id: int
    unk_id: int
    pad_to_multiple_of: int = ROW_MULTIPLE

    def __post_init__(self) -> None:
        if self.num_visual_tokens < 1:
            raise ValueError(f"num_visual_tokens must be positive, got {self.num_visual_tokens}")
        for name in ("cls_id", "sep_id", "mask_id", "pad_id", "unk_id"):
            if not 0 <= getattr(self, name) < self.text_vocab_size:
                raise ValueError(f"{name}={getattr(self, name)} lies outside the text vocabulary")

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, num_visual_tokens: int, pad_to_multiple_of: int = ROW_MULTIPLE) -> "JointVocab":
        """From a BERT tokenizer (its base vocabulary, without tokens added on top of it)."""
        return cls(
            text_vocab_size=int(tokenizer.vocab_size),
            num_visual_tokens=int(num_visual_tokens),
            cls_id=int(tokenizer.cls_token_id),
            sep_id=int(tokenizer.sep_token_id),
            mask_id=int(tokenizer.mask_token_id),
            pad_id=int(tokenizer.pad_token_id),
            unk_id=int(tokenizer.unk_token_id),
            pad_to_multiple_of=pad_to_multiple_of,
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "JointVocab":
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def video_sep_id(self) -> int:
        return self.text_vocab_size + EXTRA_TOKENS.index(VIDEO_SEP_TOKEN)

    @property
    def visual_offset(self) -> int:
        return self.text_vocab_size + len(EXTRA_TOKENS)

    @property
    def size(self) -> int:
        """Ids in use: text, extra specials and visual words."""
        return self.visual_offset + self.num_visual_tokens

    @property
    def size_padded(self) -> int:
        """Rows of the word table (``size`` rounded up to ``pad_to_multiple_of``)."""
        m = max(1, self.pad_to_multiple_of)
        return -(-self.size // m) * m

    def added_tokens(self) -> list[str]:
        """Names of every row after the text vocabulary, in id order (for an exported vocab.txt)."""
        names = list(EXTRA_TOKENS) + [self.visual_word(v) for v in range(self.num_visual_tokens)]
        return names + [PAD_ROW_FORMAT.format(i) for i in range(self.size_padded - self.size)]

    @staticmethod
    def visual_word(leaf: int) -> str:
        """The token name of codebook leaf ``leaf`` ("[V00042]")."""
        return VISUAL_TOKEN_FORMAT.format(leaf)

    def visual_to_joint(self, visual_ids):
        """Codebook leaf ids (array or tensor) to joint ids."""
        return visual_ids + self.visual_offset

    def is_visual(self, joint_ids):
        return (joint_ids >= self.visual_offset) & (joint_ids < self.size)

    def text_sequence(self, text_ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """``[CLS] text [SEP]`` and its token types."""
        ids = [self.cls_id, *text_ids, self.sep_id]
        return ids, [TEXT_TYPE] * len(ids)

    def video_sequence(self, visual_ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """``[CLS] video [SEP]`` from codebook leaf ids."""
        ids = [self.cls_id, *(int(v) + self.visual_offset for v in visual_ids), self.sep_id]
        return ids, [TEXT_TYPE] + [VIDEO_TYPE] * (len(ids) - 1)

    def joint_sequence(self, text_ids: Sequence[int], visual_ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """``[CLS] text [>] video [SEP]`` from WordPiece ids and codebook leaf ids."""
        video = [int(v) + self.visual_offset for v in visual_ids]
        ids = [self.cls_id, *text_ids, self.video_sep_id, *video, self.sep_id]
        n_text = 1 + len(text_ids)
        return ids, [TEXT_TYPE] * n_text + [VIDEO_TYPE] * (len(ids) - n_text)


def fit_lengths(n_text: int, n_video: int, budget: int) -> tuple[int, int]:
    """How many text and video tokens a joint sequence keeps when ``budget`` tokens are available.

    The truncation rule: if both fit, keep both whole. Otherwise each modality is guaranteed half
    the budget (the text gets the odd token), a modality shorter than its half gives the rest to the
    other, and each is cut from its end. Keeping both halves matters more than either tail: the
    alignment objective needs both modalities, and the masked objectives need context from both.
    """
    if budget < 0:
        raise ValueError(f"budget must be non-negative, got {budget}")
    if n_text + n_video <= budget:
        return n_text, n_video
    half_text = budget - budget // 2
    if n_text <= half_text:
        return n_text, budget - n_text
    if n_video <= budget // 2:
        return budget - n_video, n_video
    return half_text, budget // 2


JOINT_SPECIAL_COUNT = 3
"""Tokens a joint sequence adds around text and video: [CLS], [>], [SEP]."""
SINGLE_SPECIAL_COUNT = 2
"""Tokens a text-only or video-only sequence adds: [CLS], [SEP]."""
