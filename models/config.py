"""The joint transformer's configuration, its named presets, and reading a Hugging Face BERT config.

``VideoBertConfig`` is a typed, keyword-only, frozen dataclass: it validates itself on construction
(every problem at once, each message naming the fix), round-trips through JSON with ``to_dict`` /
``from_dict``, and refuses unknown keys. Field names follow transformers' ``BertConfig`` wherever the
two share a meaning, so that reading and writing a BERT ``config.json`` is a copy, not a translation.

Presets are data (``PRESETS``: name -> fields that differ from the defaults); ``preset(name, vocab,
**overrides)`` builds one. How the shapes were chosen:

- ``tiny``: the smallest shape that still has several heads and layers; for tests.
- ``demo``: the packaged MiniLM's shape (6 layers, 384 hidden, 12 heads, 1536 intermediate), so that
  the demo starts from its weights.
- ``base``, ``large``: BERT-base and BERT-large (Devlin et al.); ``large`` is the paper's model.
- ``1.3b``: Megatron-BERT's 1.3B shape (Shoeybi et al. 2019: 24 layers, 2048 hidden, 32 heads), which
  keeps BERT's 64-wide heads and 4x feed-forward; with the default 20,736 visual words (51,264 rows
  in the word table) it has about 1.32e9 parameters.
- ``3b``: the same recipe widened to 2560 hidden (40 heads of 64, Megatron-BERT's 3.9B width) with 36
  layers, the depth that lands at about 2.98e9 parameters with the default visual vocabulary.
  Both billion-scale presets turn activation checkpointing on: their activations, not their
  weights, are what overflows an accelerator at the paper's sequence lengths.
"""

from __future__ import annotations

import json
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from videobert.models.errors import MissingFileError, VideoBertError
from videobert.models.vocab import JointVocab

SUPPORTED_HIDDEN_ACTS = ("gelu",)
"""Activations the layers implement: BERT's exact (erf) GELU, which the fused kernels reproduce."""

RETIRED_FIELDS = ("kernels",)
"""Keys that configs saved by earlier versions hold and that are no longer config: read and dropped.
``kernels`` became a run-time choice of the model (``VideoBertForPreTraining.set_kernels``)."""

BERT_SHAPE_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
    "type_vocab_size", "layer_norm_eps", "initializer_range",
)
"""Fields shared, under the same names, with transformers' ``BertConfig``."""

LOSS_WEIGHT_FIELDS = ("text_mlm_weight", "video_mlm_weight", "alignment_weight")
"""The weights of the three objectives in the total loss."""

ALIGNMENT_LOSSES = ("binary", "listwise")
"""The forms of the alignment loss (``VideoBertConfig.alignment_loss``)."""

ALIGNMENT_HEADS = ("cls", "pair")
"""What the alignment classifier reads (``VideoBertConfig.alignment_head``)."""
HEAD_CONFIG_KEY = "videobert_alignment_head"
"""The config.json entry of an exported directory (``hf_interop.export_pretrained``) naming its
alignment head; read back by ``config_from_bert_dir``."""

MLM_CANDIDATES = ("modality", "joint")
"""The words a masked position is predicted among (``VideoBertConfig.mlm_candidates``)."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem with a model config: the fields it concerns and what to do."""

    fields: tuple[str, ...]
    message: str

    def __str__(self) -> str:
        return self.message


class ModelConfigError(VideoBertError, ValueError):
    """A ``VideoBertConfig`` that cannot be built; ``problems`` name the fields, so that a caller
    holding its own names for them (the trainer's config keys) can say which of its keys to fix."""

    def __init__(self, problems: list[ConfigProblem]):
        self.problems = problems
        super().__init__("invalid VideoBertConfig:\n  - " + "\n  - ".join(map(str, problems)))


@dataclass(frozen=True, kw_only=True)
class VideoBertConfig:
    """Everything that fixes the joint transformer's shape, regularisation and losses.

    Which kernels compute it is not here: that is a run-time choice of the model
    (``VideoBertForPreTraining.set_kernels``), so a saved config loads wherever the model runs.
    """

    vocab: JointVocab
    """The joint vocabulary (text WordPieces, ``[>]``, visual words, padding rows)."""
    hidden_size: int = 768
    """Width of every token's hidden state."""
    num_hidden_layers: int = 12
    """Encoder layers."""
    num_attention_heads: int = 12
    """Attention heads per layer; must divide ``hidden_size``."""
    intermediate_size: int = 3072
    """Width of the feed-forward block's inner layer."""
    hidden_act: str = "gelu"
    """Feed-forward and MLM-transform activation; only BERT's exact GELU ("gelu") is implemented."""
    hidden_dropout_prob: float = 0.1
    """Dropout on embeddings and on each sub-layer's output before its residual LayerNorm."""
    attention_probs_dropout_prob: float = 0.1
    """Dropout on attention probabilities (passed to scaled_dot_product_attention in training)."""
    max_position_embeddings: int = 512
    """Longest sequence the position table covers."""
    type_vocab_size: int = 2
    """Token types: 0 for [CLS] and text, 1 for video (the vocabulary's TEXT_TYPE / VIDEO_TYPE)."""
    layer_norm_eps: float = 1e-12
    """Epsilon of every LayerNorm."""
    initializer_range: float = 0.02
    """Standard deviation of the normal initialisation of linear and embedding weights."""
    gradient_checkpointing: bool = False
    """Recompute each encoder layer's activations in the backward pass instead of storing them."""
    text_mlm_weight: float = 1.0
    """Weight of the masked text-token loss in the total loss."""
    video_mlm_weight: float = 1.0
    """Weight of the masked visual-token loss in the total loss."""
    alignment_weight: float = 1.0
    """Weight of the text-video alignment loss in the total loss."""
    mlm_candidates: str = "modality"
    """The words a masked position is predicted among. ``modality``: a text position among the text
    vocabulary, a video position among the visual words (the other modality's rows are never a
    target there, and take no gradient from it). ``joint``: every row of the tied word table. With
    ``joint``, every text target's softmax pushes all visual rows down the same way each step, and
    Adam turns that small shared gradient into a full-size step: the visual words' input
    embeddings drift together, faster than their differences grow, and the model stops telling
    one video from another (alignment, and the text's use of the video, stay at chance)."""
    alignment_head: str = "cls"
    """``cls``: BERT's pooler and next-sentence classifier on [CLS] (the paper's). ``pair``: the same,
    plus a bilinear score of the text's and the video's mean output states (each layer-normalised,
    [CLS] left out) added to the aligned logit; its matrix (``alignment_head.pair``) starts at zero.
    The [CLS] head must learn, through attention, to fold a comparison of the two modalities into
    one position; the pair term compares them directly, as a bag-of-words model of text x visual
    words would, and sends the alignment loss's gradient to every text and video position."""
    alignment_loss: str = "binary"
    """``binary``: the 2-way classifier's cross-entropy on each row (the paper's). ``listwise``: a
    softmax over the rows of one text (``alignment_groups``), each scored by the same classifier
    (aligned minus misaligned logit), whose target is the aligned row."""

    def __post_init__(self) -> None:
        problems = _type_problems(self)
        if not problems:  # range checks assume the types are right
            problems = _value_problems(self)
        if problems:
            raise ModelConfigError(problems)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (the vocabulary as its own dict); ``from_dict`` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VideoBertConfig":
        """Strict inverse of ``to_dict``: unknown keys are errors, the vocabulary may be a dict."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - set(RETIRED_FIELDS))
        if unknown:
            raise ValueError(f"unknown VideoBertConfig keys {unknown}; known keys: {sorted(known)}")
        if "vocab" not in d:
            raise ValueError("VideoBertConfig needs 'vocab' (a JointVocab or its dict)")
        values = {k: v for k, v in d.items() if k not in RETIRED_FIELDS}
        values["vocab"] = _vocab_from(values["vocab"])
        return cls(**values)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> "VideoBertConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _vocab_from(value: Any) -> JointVocab:
    if isinstance(value, JointVocab):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"vocab must be a JointVocab or its dict, got {type(value).__name__}")
    known = {f.name for f in fields(JointVocab)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"unknown vocab keys {unknown}; known keys: {sorted(known)}")
    try:
        return JointVocab.from_dict(value)
    except TypeError as err:  # a required key is missing
        raise ValueError(f"vocab: {err}") from None


def _expected_types() -> dict[str, Any]:
    return typing.get_type_hints(VideoBertConfig)


def _type_problems(cfg: VideoBertConfig) -> list[ConfigProblem]:
    problems = []
    for name, expected in _expected_types().items():
        value = getattr(cfg, name)
        if expected is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif expected is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, expected)
        if not ok:
            problems.append(ConfigProblem((name,), f"{name} must be {expected.__name__}, got {value!r} ({type(value).__name__})"))
    return problems


def _value_problems(cfg: VideoBertConfig) -> list[ConfigProblem]:
    problems = []

    def problem(fields: tuple[str, ...], message: str) -> None:
        problems.append(ConfigProblem(fields, message))

    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "max_position_embeddings"):
        if getattr(cfg, name) < 1:
            problem((name,), f"{name} must be positive, got {getattr(cfg, name)}")
    if cfg.num_attention_heads >= 1 and cfg.hidden_size % cfg.num_attention_heads:
        problem(("hidden_size", "num_attention_heads"),
                f"hidden_size ({cfg.hidden_size}) must be a multiple of num_attention_heads "
                f"({cfg.num_attention_heads}): change one of them (BERT uses heads of 64)")
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            problem((name,), f"{name} must lie in [0, 1), got {getattr(cfg, name)}")
    if cfg.hidden_act not in SUPPORTED_HIDDEN_ACTS:
        problem(("hidden_act",), f"hidden_act {cfg.hidden_act!r} is not implemented; set hidden_act='gelu' (BERT's)")
    if cfg.type_vocab_size < 2:
        problem(("type_vocab_size",), f"type_vocab_size must be at least 2 (0: text, 1: video), got {cfg.type_vocab_size}")
    if cfg.layer_norm_eps <= 0 or cfg.initializer_range <= 0:
        problem(("layer_norm_eps", "initializer_range"), "layer_norm_eps and initializer_range must be positive")
    weights = {name: getattr(cfg, name) for name in LOSS_WEIGHT_FIELDS}
    if min(weights.values()) < 0 or max(weights.values()) <= 0:
        problem(LOSS_WEIGHT_FIELDS, f"loss weights must be non-negative with at least one positive, got {weights}")
    if cfg.mlm_candidates not in MLM_CANDIDATES:
        problem(("mlm_candidates",), f"mlm_candidates {cfg.mlm_candidates!r}: use one of {', '.join(MLM_CANDIDATES)}")
    if cfg.alignment_head not in ALIGNMENT_HEADS:
        problem(("alignment_head",), f"alignment_head {cfg.alignment_head!r}: use one of {', '.join(ALIGNMENT_HEADS)}")
    if cfg.alignment_loss not in ALIGNMENT_LOSSES:
        problem(("alignment_loss",), f"alignment_loss {cfg.alignment_loss!r}: use one of {', '.join(ALIGNMENT_LOSSES)}")
    return problems


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                 max_position_embeddings=128),
    "demo": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "1.3b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, intermediate_size=8192,
                 gradient_checkpointing=True),
    "3b": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=40, intermediate_size=10240,
               gradient_checkpointing=True),
}
"""Preset name -> the fields it sets (everything else keeps the ``VideoBertConfig`` default)."""


def preset(name: str, vocab: JointVocab, **overrides: Any) -> VideoBertConfig:
    """The preset ``name`` for ``vocab``, with ``overrides`` applied on top (unknown fields are errors)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {list(PRESETS)}")
    return VideoBertConfig.from_dict({**PRESETS[name], **overrides, "vocab": vocab})


def config_from_bert_dir(path: str | Path, vocab: JointVocab, **overrides: Any) -> VideoBertConfig:
    """The shape of the Hugging Face BERT in directory ``path`` (its ``config.json``), for ``vocab``.

    The checkpoint's word table must be the text vocabulary of ``vocab`` (or already the whole joint
    table, as in a directory written by ``export_pretrained``). ``overrides`` set any other field.
    """
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise MissingFileError(f"{config_file} does not exist: expected a Hugging Face BERT directory")
    hf = json.loads(config_file.read_text())
    problems = _bert_dir_problems(hf, vocab)
    if problems:
        raise ValueError(f"{config_file} cannot become a VideoBERT:\n  - " + "\n  - ".join(problems))
    shape = {name: hf[name] for name in BERT_SHAPE_FIELDS if name in hf}
    if HEAD_CONFIG_KEY in hf:
        shape["alignment_head"] = hf[HEAD_CONFIG_KEY]
    return VideoBertConfig.from_dict({**shape, **overrides, "vocab": vocab})


def _bert_dir_problems(hf: Mapping[str, Any], vocab: JointVocab) -> list[str]:
    problems = []
    if hf.get("model_type", "bert") != "bert":
        problems.append(f"model_type is {hf.get('model_type')!r}; only BERT checkpoints are supported")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        problems.append("position_embedding_type must be 'absolute' (BERT's learned positions)")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        problems.append("decoder / cross-attention BERTs are not supported: use an encoder checkpoint")
    rows = hf.get("vocab_size")
    if rows not in (vocab.text_vocab_size, vocab.size_padded):
        problems.append(
            f"vocab_size is {rows}, but the joint vocabulary's text part has {vocab.text_vocab_size} "
            f"ids (joint table: {vocab.size_padded}): build the JointVocab from this directory's tokenizer"
        )
    return problems
