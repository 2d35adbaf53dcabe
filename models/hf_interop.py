"""Import from and export to Hugging Face transformers' BERT.

- ``from_pretrained_bert``: a ``VideoBertForPreTraining`` from any local BERT directory (a
  ``BertModel`` such as the packaged MiniLM, or a ``BertForPreTraining`` such as BERT-large), every
  pretrained weight kept. The word table grows from the text vocabulary to the joint one; heads the
  directory lacks are initialised as BERT initialises them, and that is logged.
- ``export_pretrained``: a directory that ``transformers.BertForPreTraining.from_pretrained`` loads
  with the joint vocabulary and that gives the same logits as our model; its tokenizer
  (``joint_tokenizer``) keeps every visual word one id and lays out the pair
  ``tokenizer(text, visual_words)`` as ``[CLS] text [>] video [SEP]`` with the trained token types.
- ``bert_key_table``: the one place where our parameter names meet BERT's, used both ways.

The new rows of the word table ([>], visual words, padding rows) are drawn from a normal with the
per-dimension mean and standard deviation of the pretrained rows: they start inside the cloud of
existing embeddings, at the scale LayerNorm and attention were trained on, and distinct from each
other (a shared mean vector would make every visual word identical). Their MLM output biases start
at the mean pretrained bias, so the new words begin with an average prior rather than an extreme one.
The draw uses torch's global generator: seed it for a reproducible start.

Parameters a checkpoint carries but never trained count as new, as the ones it lacks do
(``load_pretrained_bert(..., untrained_as_new=True)``, the default). A sentence-transformers model
such as the packaged MiniLM ships BERT's pooler although it was trained through mean pooling: no
gradient ever reached it, so it holds its initial draw (shrunk by weight decay: the MiniLM pooler's
std is 0.0091, not its initializer_range 0.02) and a zero bias. The rule is judged per module, on
the values as loaded, and every condition must hold (a genuinely trained BERT fails several):

- a Linear: its bias exactly zero (gradient descent never leaves a whole bias at exactly 0), and its
  weight an i.i.d. normal(0, s) draw with s at most the checkpoint's ``initializer_range`` (decay
  only shrinks; up to ``UNTRAINED_STD_SLACK`` above it, more for a small matrix's sampling error):
  mean within ``UNTRAINED_SIGMAS`` standard errors of 0, excess kurtosis within
  ``UNTRAINED_KURTOSIS_SLACK`` plus ``UNTRAINED_SIGMAS`` standard errors (sqrt(24/n)) of 0, and top
  singular value within ``UNTRAINED_EDGE_SLACK`` of the edge s * (sqrt(rows) + sqrt(cols)) of a
  random matrix's spectrum. MiniLM's trained encoder matrices fail all of these but, mostly, the mean:
  no zero bias, std 0.039 to 0.095 (1.9 to 4.8 x initializer_range), excess kurtosis 0.22 to 1582,
  top singular value 1.11 to 4.13 x the edge; its pooler passes them all (zero bias, std 0.0091,
  mean 2.3 standard errors from 0, excess kurtosis -0.017, top singular value 0.986 x the edge).
- a LayerNorm: weight exactly all ones and bias exactly all zeros.
- an embedding table, or a bias of its own (the decoder's): exactly all zeros. A trained-looking
  table carries no bias to anchor the judgement, so a normal-looking one is never flagged.

Such parameters join ``new_parameter_names`` (so ``optim.new_parameters_lr_multiplier`` applies to
them) and keep the values they were loaded with; they are not re-initialised. A re-draw would carry
no more information than the draw they hold (a LayerNorm at ones/zeros or a zero bias would come out
identical), while keeping them makes loading a pure function of the files: no draw from torch's
global generator, so an exported model (whose heads may still be at their initial values, as at
step 0 or with an objective switched off) reloads bit for bit, and an evaluation's processes, each
loading the export, hold the same weights however their generators stand. The one difference a
re-draw would make is the scale of a decayed draw (MiniLM's pooler: std 0.0091 rather than 0.02);
both are random starts. Each is logged at INFO with the statistic that decided, apart from the
parameters the checkpoint lacks. ``untrained_as_new=False`` counts only the absent ones.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import BertConfig, BertTokenizerFast, PreTrainedTokenizerFast

from videobert.models.config import BERT_SHAPE_FIELDS, HEAD_CONFIG_KEY, VideoBertConfig, config_from_bert_dir
from videobert.models.errors import MissingFileError
from videobert.models.videobert import VideoBertForPreTraining
from videobert.models.vocab import VIDEO_SEP_TOKEN, JointVocab

logger = logging.getLogger(__name__)

WORD_TABLE = "embeddings.word.weight"
DECODER_WEIGHT = "mlm_head.decoder.weight"
"""Our tied decoder weight: the word table under a second name, never stored separately."""
DECODER_BIAS = "mlm_head.decoder.bias"

PAIR = "alignment_head.pair"
"""The ``pair`` alignment head's matrix (``VideoBertConfig.alignment_head``): BERT has no place for it."""
PAIR_BERT_KEY = "videobert.alignment_head.pair"
"""Its name in a directory ``export_pretrained`` writes (transformers lists it as an unused weight)."""

HEAD_KEYS_MAY_BE_ABSENT = ("alignment_head.", "mlm_head.")
"""Prefixes of our parameters a BERT directory may lack (an encoder-only checkpoint)."""

_REGULARISATION_FIELDS = {"hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range"}
"""Fields shared with BertConfig that a caller may override: they do not change the weights."""

_BERT_MODEL_ROOTS = ("embeddings.", "encoder.", "pooler.")
"""How a ``BertModel`` names its parameters (``BertForPreTraining`` adds the ``bert.`` prefix)."""

UNTRAINED_SIGMAS = 4.0
"""How many standard errors the mean and the excess kurtosis of an untrained weight may stray from 0."""
UNTRAINED_KURTOSIS_SLACK = 0.05
"""Excess kurtosis an untrained weight may show beyond its standard errors (float rounding, the
initialiser's own tails)."""
UNTRAINED_STD_SLACK = 0.05
"""How far (relatively) an untrained weight's std may exceed the checkpoint's initializer_range."""
UNTRAINED_EDGE_SLACK = 0.1
"""How far (relatively) an untrained weight's top singular value may stray from the random edge."""

_IGNORED_BERT_KEYS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")
"""Buffers some checkpoints store; they are recomputed, not learned."""


def bert_key_table(num_layers: int) -> list[tuple[str, tuple[str, ...]]]:
    """(our name, BERT names) for every parameter; several BERT names are concatenated along dim 0."""
    table = [
        (WORD_TABLE, ("bert.embeddings.word_embeddings.weight",)),
        ("embeddings.position.weight", ("bert.embeddings.position_embeddings.weight",)),
        ("embeddings.token_type.weight", ("bert.embeddings.token_type_embeddings.weight",)),
    ]
    for s in ("weight", "bias"):
        table.append((f"embeddings.norm.{s}", (f"bert.embeddings.LayerNorm.{s}",)))
        table.append((f"alignment_head.pooler.{s}", (f"bert.pooler.dense.{s}",)))
        table.append((f"alignment_head.classifier.{s}", (f"cls.seq_relationship.{s}",)))
        table.append((f"mlm_head.dense.{s}", (f"cls.predictions.transform.dense.{s}",)))
        table.append((f"mlm_head.norm.{s}", (f"cls.predictions.transform.LayerNorm.{s}",)))
    table.append((DECODER_BIAS, ("cls.predictions.bias",)))
    for i in range(num_layers):
        ours, theirs = f"encoder.layers.{i}.", f"bert.encoder.layer.{i}."
        for s in ("weight", "bias"):
            qkv = tuple(f"{theirs}attention.self.{n}.{s}" for n in ("query", "key", "value"))
            table += [
                (f"{ours}attention.qkv.{s}", qkv),
                (f"{ours}attention_out.{s}", (f"{theirs}attention.output.dense.{s}",)),
                (f"{ours}attention_norm.{s}", (f"{theirs}attention.output.LayerNorm.{s}",)),
                (f"{ours}ffn_in.{s}", (f"{theirs}intermediate.dense.{s}",)),
                (f"{ours}ffn_out.{s}", (f"{theirs}output.dense.{s}",)),
                (f"{ours}ffn_norm.{s}", (f"{theirs}output.LayerNorm.{s}",)),
            ]
    return table


def normalize_bert_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BERT names as ``BertForPreTraining`` spells them, whichever class and era saved the file.

    A ``BertModel`` saves without the ``bert.`` prefix; TensorFlow-era files call LayerNorm's
    parameters ``gamma`` / ``beta``; the decoder's bias may appear under ``decoder.bias``.
    """
    out = {}
    for key, value in state.items():
        if key.startswith(_BERT_MODEL_ROOTS):
            key = "bert." + key
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if key == "cls.predictions.decoder.bias":
            key = "cls.predictions.bias"
        out.setdefault(key, value)
    return out


def _grow_rows(pretrained: torch.Tensor, rows: int) -> torch.Tensor:
    """Append rows drawn from the pretrained rows' per-dimension mean and spread (see module doc)."""
    extra = rows - pretrained.shape[0]
    if extra <= 0:
        return pretrained
    if pretrained.dim() == 1:  # the decoder bias
        fill = pretrained.float().mean().expand(extra)
    else:
        source = pretrained.float()
        mean, std = source.mean(dim=0), source.std(dim=0)
        fill = mean + std * torch.randn(extra, pretrained.shape[1])
    return torch.cat([pretrained, fill.to(pretrained.dtype)])


def bert_to_videobert_state(
    bert_state: Mapping[str, torch.Tensor], config: VideoBertConfig
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our state dict from a BERT state dict (any naming ``normalize_bert_keys`` accepts).

    Returns the state and the names of our parameters the checkpoint did not have (heads only;
    anything else missing, or any BERT weight we could not place, is an error).
    """
    bert = normalize_bert_keys(bert_state)
    _check_tied_decoder(bert)
    used = set(_IGNORED_BERT_KEYS) | {"cls.predictions.decoder.weight"}
    state, absent = {}, []
    for ours, theirs in bert_key_table(config.num_hidden_layers):
        if all(name in bert for name in theirs):
            state[ours] = torch.cat([bert[name] for name in theirs]) if len(theirs) > 1 else bert[theirs[0]]
            used.update(theirs)
        elif ours.startswith(HEAD_KEYS_MAY_BE_ABSENT):
            absent.append(ours)
        else:
            raise ValueError(f"the BERT checkpoint lacks {', '.join(theirs)} (needed for {ours})")
    if config.alignment_head == "pair":
        if PAIR_BERT_KEY in bert:
            state[PAIR] = bert[PAIR_BERT_KEY]
            used.add(PAIR_BERT_KEY)
        else:
            absent.append(PAIR)
    elif PAIR_BERT_KEY in bert:
        raise ValueError(f"the checkpoint holds {PAIR_BERT_KEY}, the matrix of the 'pair' alignment head, but "
                         f"the model asks for alignment_head={config.alignment_head!r}: set alignment_head='pair'")
    unplaced = sorted(set(bert) - used)
    if unplaced:
        raise ValueError(
            f"BERT weights with no place in VideoBERT: {unplaced}; use a BERT encoder or pretraining checkpoint"
        )
    rows = config.vocab.size_padded
    state[WORD_TABLE] = _grow_rows(state[WORD_TABLE], rows)
    if DECODER_BIAS in state:
        state[DECODER_BIAS] = _grow_rows(state[DECODER_BIAS], rows)
    return state, absent


def _check_tied_decoder(bert: Mapping[str, torch.Tensor]) -> None:
    decoder = bert.get("cls.predictions.decoder.weight")
    if decoder is not None and not torch.equal(decoder, bert["bert.embeddings.word_embeddings.weight"]):
        raise ValueError("cls.predictions.decoder.weight differs from the word embeddings: VideoBERT ties them")


def videobert_to_bert_state(state: Mapping[str, torch.Tensor], config: VideoBertConfig) -> dict[str, torch.Tensor]:
    """BERT names for our state dict (the tied decoder weight is left to the loader, as BERT saves it)."""
    out = {}
    for ours, theirs in bert_key_table(config.num_hidden_layers):
        parts = state[ours].chunk(len(theirs)) if len(theirs) > 1 else (state[ours],)
        out.update(zip(theirs, parts))
    if PAIR in state:
        out[PAIR_BERT_KEY] = state[PAIR]
    return out


def read_bert_state(bert_dir: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a Hugging Face directory: safetensors (single or sharded) or ``pytorch_model.bin``."""
    root = Path(bert_dir)
    index = root / "model.safetensors.index.json"
    if (root / "model.safetensors").is_file():
        return load_file(root / "model.safetensors")
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(root / shard).items()}
    if (root / "pytorch_model.bin").is_file():
        return torch.load(root / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise MissingFileError(f"no model.safetensors(.index.json) or pytorch_model.bin in {root}")


def from_pretrained_bert(
    bert_dir: str | Path, vocab: JointVocab, *, untrained_as_new: bool = True, **config_overrides: Any
) -> VideoBertForPreTraining:
    """A VideoBERT whose encoder (and heads, where present) are the BERT in ``bert_dir``.

    ``config_overrides`` set fields other than the shape (dropouts, loss weights, checkpointing...);
    the shape comes from the directory. ``untrained_as_new``: see ``load_pretrained_bert``.
    """
    shape_overrides = sorted(set(config_overrides) & set(BERT_SHAPE_FIELDS) - _REGULARISATION_FIELDS)
    if shape_overrides:
        raise ValueError(f"{shape_overrides} come from {bert_dir}/config.json and cannot be overridden here")
    config = config_from_bert_dir(bert_dir, vocab, **config_overrides)
    return load_pretrained_bert(bert_dir, config, untrained_as_new=untrained_as_new)


def untrained_weight_reason(weight: torch.Tensor, initializer_range: float) -> str | None:
    """Why ``weight`` (a matrix) looks like an untouched normal(0, s <= initializer_range) draw, or
    None where it does not (see the module doc)."""
    w = weight.detach().to("cpu", torch.float64)
    n = w.numel()
    if w.dim() != 2 or n < 2:
        return None
    mean, std = float(w.mean()), float(w.std())
    if std == 0.0 or not math.isfinite(std):
        return None
    std_limit = initializer_range * (1.0 + max(UNTRAINED_STD_SLACK, UNTRAINED_SIGMAS / math.sqrt(2 * n)))
    if std > std_limit or abs(mean) > UNTRAINED_SIGMAS * std / math.sqrt(n):
        return None
    kurtosis = float((((w - mean) / std) ** 4).mean()) - 3.0
    if abs(kurtosis) > UNTRAINED_KURTOSIS_SLACK + UNTRAINED_SIGMAS * math.sqrt(24.0 / n):
        return None
    edge = std * (math.sqrt(w.shape[0]) + math.sqrt(w.shape[1]))
    top = float(torch.linalg.matrix_norm(w, ord=2))
    if abs(top / edge - 1.0) > UNTRAINED_EDGE_SLACK:
        return None
    return (f"weight mean {mean:+.2e} ({abs(mean) / (std / math.sqrt(n)):.2f} standard errors), std {std:.5f} "
            f"({std / initializer_range:.3f} x initializer_range), excess kurtosis {kurtosis:+.3f}, "
            f"top singular value {top / edge:.3f} x the random edge")


def untrained_parameters(
    model: VideoBertForPreTraining, carried: set[str], initializer_range: float
) -> list[tuple[tuple[str, ...], str]]:
    """(names, why) for each group of carried parameters judged never trained (module doc): a
    Linear's weight and bias, a LayerNorm's weight and bias, an embedding table, the decoder bias."""
    found = []
    for prefix, module in model.named_modules():
        names = {s: f"{prefix}.{s}" for s, _ in module.named_parameters(recurse=False)}
        if prefix.startswith("mlm_head.decoder") or not names or not set(names.values()) <= carried:
            continue  # the decoder's bias is judged below, its weight is the word table
        if isinstance(module, nn.Linear) and module.bias is not None:
            if not torch.count_nonzero(module.bias):
                reason = untrained_weight_reason(module.weight, initializer_range)
                if reason is not None:
                    found.append((tuple(names.values()), f"bias all zero; {reason}"))
        elif isinstance(module, nn.LayerNorm) and module.weight is not None and module.bias is not None:
            if bool((module.weight == 1).all()) and not torch.count_nonzero(module.bias):
                found.append((tuple(names.values()), "weight all ones and bias all zeros"))
        elif isinstance(module, nn.Embedding) and not torch.count_nonzero(module.weight):
            found.append((tuple(names.values()), "table all zeros"))
    if DECODER_BIAS in carried and not torch.count_nonzero(model.mlm_head.decoder.bias):
        found.append(((DECODER_BIAS,), "all zeros"))
    return found


def _checkpoint_initializer_range(bert_dir: str | Path, config: VideoBertConfig) -> float:
    """The initializer_range the checkpoint was drawn with (its config.json), else the model's."""
    path = Path(bert_dir) / "config.json"
    if path.is_file():
        value = json.loads(path.read_text()).get("initializer_range")
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return config.initializer_range


def load_pretrained_bert(
    bert_dir: str | Path, config: VideoBertConfig, *, untrained_as_new: bool = True
) -> VideoBertForPreTraining:
    """A VideoBERT of ``config`` (whose shape is the one of ``bert_dir``: ``config_from_bert_dir``)
    holding the weights of the BERT in ``bert_dir``; heads the directory lacks start as BERT's do.

    ``model.new_parameter_names`` lists the parameters the directory lacks and, with
    ``untrained_as_new``, those it carries but never trained (module doc; their values are kept)."""
    state, absent = bert_to_videobert_state(read_bert_state(bert_dir), config)
    model = VideoBertForPreTraining(config)  # the constructors initialise the absent heads as BERT does
    missing, unexpected = model.load_state_dict(state, strict=False)
    not_loaded = sorted(set(missing) - set(absent) - {DECODER_WEIGHT})
    if not_loaded or unexpected:
        raise RuntimeError(f"state mismatch loading {bert_dir}: missing {not_loaded}, unexpected {unexpected}")
    model.tie_weights()
    untrained: list[str] = []
    if untrained_as_new:
        carried = set(state) - {DECODER_WEIGHT}
        for names, reason in untrained_parameters(model, carried, _checkpoint_initializer_range(bert_dir, config)):
            untrained += names
            logger.info("%s: %s judged never trained (%s); kept as loaded and counted as new",
                        bert_dir, ", ".join(names), reason)
    model.new_parameter_names = tuple(sorted(absent + untrained))
    if absent:
        logger.info("%s has no weights for %s; initialised as BERT does", bert_dir, ", ".join(absent))
    return model


def load_text_tokenizer(bert_dir: str | Path) -> Any:
    """The WordPiece tokenizer stored with the BERT in ``bert_dir``: a joint vocabulary's (one whose
    vocab.txt holds ``[>]``, as ``export_pretrained`` writes it) read from its tokenizer.json as
    written, visual words and pair layout included (``write_joint_tokenizer``); any other BERT's as
    ``BertTokenizerFast``."""
    root = Path(bert_dir)
    if (root / "tokenizer.json").is_file() and _holds_video_separator(root / "vocab.txt"):
        return PreTrainedTokenizerFast.from_pretrained(str(root))
    return BertTokenizerFast.from_pretrained(str(root))


def _holds_video_separator(vocab_txt: Path) -> bool:
    if not vocab_txt.is_file():
        return False
    with open(vocab_txt, encoding="utf-8") as f:
        return any(line.rstrip("\n") == VIDEO_SEP_TOKEN for line in f)


def bert_config_for(config: VideoBertConfig) -> BertConfig:
    """transformers' BertConfig with our shape and the joint vocabulary's table size."""
    shape = {name: getattr(config, name) for name in BERT_SHAPE_FIELDS}
    return BertConfig(
        vocab_size=config.vocab.size_padded, pad_token_id=config.vocab.pad_id,
        architectures=["BertForPreTraining"], **{HEAD_CONFIG_KEY: config.alignment_head}, **shape,
    )


def export_pretrained(model: VideoBertForPreTraining, out_dir: str | Path, tokenizer: Any) -> Path:
    """Write ``model`` and its joint tokenizer as a transformers ``BertForPreTraining`` directory.

    ``tokenizer`` is the text tokenizer the vocabulary was built from. The directory holds
    config.json (vocab_size = the joint table), model.safetensors (BERT's names), vocab.txt (text
    vocabulary, then ``vocab.added_tokens()``) and the joint tokenizer's files (``joint_tokenizer``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    bert_config_for(config).save_pretrained(out)
    state = videobert_to_bert_state(model.state_dict(), config)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}  # q/k/v: own storage
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    write_joint_tokenizer(tokenizer, config.vocab, out)
    return out


def write_joint_tokenizer(tokenizer: Any, vocab: JointVocab, out_dir: Path) -> PreTrainedTokenizerFast:
    """vocab.txt over the whole joint table and a tokenizer of it (tokenizer.json) that a transformers
    user can feed (see ``joint_tokenizer``)."""
    if tokenizer.vocab_size not in (vocab.text_vocab_size, vocab.size_padded):
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the joint vocabulary's text part has "
            f"{vocab.text_vocab_size}: pass the tokenizer the vocabulary was built from"
        )
    words = tokenizer.convert_ids_to_tokens(list(range(vocab.text_vocab_size)))
    vocab_text = "\n".join(words + vocab.added_tokens()) + "\n"
    settings = {k: getattr(tokenizer, k) for k in ("do_lower_case", "strip_accents", "tokenize_chinese_chars")
                if hasattr(tokenizer, k)}
    with tempfile.TemporaryDirectory() as scratch:  # built from vocab.txt alone, never from stale files
        (Path(scratch) / "vocab.txt").write_text(vocab_text, encoding="utf-8")
        bert = BertTokenizerFast.from_pretrained(scratch, model_max_length=tokenizer.model_max_length, **settings)
    joint = joint_tokenizer(bert, vocab)
    joint.save_pretrained(str(out_dir))
    (out_dir / "vocab.txt").write_text(vocab_text, encoding="utf-8")
    return joint


def joint_tokenizer(bert: BertTokenizerFast, vocab: JointVocab) -> PreTrainedTokenizerFast:
    """``bert`` (reading the joint vocab.txt) made to read VideoBERT's inputs.

    * ``[>]`` is a special token and every visual word an added token that is matched before
      normalisation: ``[V00037]`` stays one id (BERT's lower-casing and punctuation split would
      otherwise cut it into ``[``, ``v``, ``##00``...).
    * The pair form ``tokenizer(text, visual_words)`` lays out ``[CLS] text [>] video [SEP]`` with
      token type 0 up to the text's end and 1 from ``[>]`` on, as the model was trained
      (``models.vocab``); the single form stays ``[CLS] text [SEP]``.

    It is a ``PreTrainedTokenizerFast`` over the ``tokenizers`` pipeline (``AutoTokenizer`` loads
    it as written): ``BertTokenizerFast`` rebuilds BERT's own pair template when it loads.
    """
    from tokenizers import AddedToken
    from tokenizers.processors import TemplateProcessing

    backend = bert.backend_tokenizer
    backend.add_special_tokens([AddedToken(VIDEO_SEP_TOKEN, normalized=False, special=True)])
    backend.add_tokens([AddedToken(vocab.visual_word(v), normalized=False, special=False)
                        for v in range(vocab.num_visual_tokens)])
    cls, sep = bert.cls_token, bert.sep_token
    backend.post_processor = TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {VIDEO_SEP_TOKEN}:1 $B:1 {sep}:1",
        special_tokens=[(cls, vocab.cls_id), (sep, vocab.sep_id), (VIDEO_SEP_TOKEN, vocab.video_sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=bert.model_max_length, additional_special_tokens=[VIDEO_SEP_TOKEN],
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        **{f"{name}_token": getattr(bert, f"{name}_token") for name in ("cls", "sep", "pad", "unk", "mask")},
    )
