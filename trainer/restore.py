"""The model to evaluate, from a run folder, a checkpoint folder or an exported transformers directory.

* a run folder (holds ``checkpoints/``): its newest complete checkpoint;
* a checkpoint folder ``step-N`` (with its ``COMPLETE`` marker): the ZeRO partitions of every rank
  gathered into one fp32 model (``trainer.checkpoint.consolidated_model``); its ``config.yaml``
  names the tokenizer, the codebook, the held-out shards, the sequence length and the objectives;
* a directory written by ``videobert export`` (or any ``BertForPreTraining`` directory whose
  ``vocab.txt`` holds the joint vocabulary): the joint vocabulary is read back from ``vocab.txt``;
  the run's config and the codebook's hash come from the files ``export`` writes beside the weights
  (``EXPORT_INFO``, ``EXPORT_CONFIG``), when present.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.vocab import EXTRA_TOKENS, VIDEO_SEP_TOKEN, JointVocab
from trainer.checkpoint import COMPLETE, latest_complete
from trainer.config import TrainConfig, load_config

EXPORT_INFO = "videobert.json"
"""Written by ``videobert export``: the step, the checkpoint it came from, the codebook's hash."""
EXPORT_CONFIG = "videobert-run.yaml"
"""Written by ``videobert export``: the run's resolved config."""
_VISUAL_WORD = re.compile(r"^\[V\d+\]$")


class RestoreError(ValueError):
    """A path that holds no model ``videobert eval`` can read; the message says what it expected."""


@dataclass
class Restored:
    """A model ready for evaluation and what came with it."""

    model: torch.nn.Module
    tokenizer: Any
    vocab: JointVocab
    cfg: TrainConfig | None
    """The run's config (None for an exported directory without one)."""
    source: Path
    """The checkpoint folder or exported directory read."""
    step: int | None
    codebook_hash: str | None
    run_dir: Path | None
    """The run folder the checkpoint belongs to (None for an exported directory)."""


def restore(path: str | Path, device: torch.device | str = "cpu") -> Restored:
    """The model at ``path`` (see module doc), in eval mode on ``device``."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        newest = latest_complete(path / "checkpoints")
        if newest is None:
            raise RestoreError(f"{path}/checkpoints holds no complete checkpoint (none has its {COMPLETE} marker)")
        path = newest
    if (path / COMPLETE).is_file():
        restored = _from_checkpoint(path)
    elif (path / "config.json").is_file():
        restored = _from_export(path)
    else:
        raise RestoreError(f"{path} is neither a run folder, a complete checkpoint folder (step-N with {COMPLETE}) "
                           "nor an exported transformers directory (config.json)")
    restored.model.to(device).eval()
    return restored


def _from_checkpoint(folder: Path) -> Restored:
    from trainer.build import build_tokenizer
    from trainer.checkpoint import consolidated_model

    cfg = load_config(folder / "config.yaml")
    model = consolidated_model(folder)
    state = json.loads((folder / "trainer" / "rank-00000.json").read_text())
    step = int(json.loads((folder / COMPLETE).read_text())["step"])
    return Restored(model=model, tokenizer=build_tokenizer(cfg), vocab=model.config.vocab, cfg=cfg, source=folder,
                    step=step, codebook_hash=state.get("codebook_hash") or None, run_dir=folder.parent.parent)


def _from_export(folder: Path) -> Restored:
    from models.hf_interop import from_pretrained_bert, load_text_tokenizer

    tokenizer = load_text_tokenizer(folder)
    vocab = joint_vocab_of_export(folder, tokenizer)
    info = json.loads((folder / EXPORT_INFO).read_text()) if (folder / EXPORT_INFO).is_file() else {}
    cfg = load_config(folder / EXPORT_CONFIG) if (folder / EXPORT_CONFIG).is_file() else None
    model = from_pretrained_bert(folder, vocab)
    return Restored(model=model, tokenizer=tokenizer, vocab=vocab, cfg=cfg, source=folder, step=info.get("step"),
                    codebook_hash=info.get("codebook_hash"), run_dir=None)


def joint_vocab_of_export(folder: Path, tokenizer: Any) -> JointVocab:
    """The joint vocabulary an exported directory's vocab.txt lays out (``JointVocab.added_tokens``)."""
    words = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    if VIDEO_SEP_TOKEN not in words:
        raise RestoreError(f"{folder}/vocab.txt has no {VIDEO_SEP_TOKEN} token: not a VideoBERT export "
                           "(write one with `videobert export`)")
    text_size = words.index(VIDEO_SEP_TOKEN)
    visual = words[text_size + len(EXTRA_TOKENS) :]
    num_visual = next((i for i, w in enumerate(visual) if not _VISUAL_WORD.match(w)), len(visual))
    rows = int(json.loads((folder / "config.json").read_text())["vocab_size"])
    ids = {name: int(tokenizer.convert_tokens_to_ids(getattr(tokenizer, f"{name}_token")))
           for name in ("cls", "sep", "mask", "pad", "unk")}
    for multiple in (64, rows):
        vocab = JointVocab(text_vocab_size=text_size, num_visual_tokens=num_visual, pad_to_multiple_of=multiple,
                           **{f"{k}_id": v for k, v in ids.items()})
        if vocab.size_padded == rows:
            return vocab
    raise RestoreError(f"{folder}: config.json has {rows} word rows but vocab.txt lays out {vocab.size}")
