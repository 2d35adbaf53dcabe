"""Loading a model for evaluation: from a run folder, a checkpoint folder or an exported directory.

* a run folder (holds ``checkpoints/``): its newest complete checkpoint;
* a checkpoint folder ``step-N`` (with its ``COMPLETE`` marker): the ZeRO partitions of every rank
  gathered into one fp32 model (``trainer.checkpoint.consolidated_model``); its ``config.yaml``
  names the tokenizer, the codebook, the held-out shards, the sequence length and the objectives;
* a directory written by ``videobert export``: the joint vocabulary is read back from ``vocab.txt``;
  the run's config and the codebook's hash come from the files ``export`` writes beside the weights
  (``run_folder.EXPORT_CONFIG``, ``run_folder.EXPORT_INFO``). ``EXPORT_INFO`` is the export's
  completion marker: a directory without it is refused. Weights are read from ``model.safetensors``
  only: reading an export runs no pickle (a checkpoint's engine files, which DeepSpeed writes with
  pickle, are another matter: see the README's trust model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from videobert.models.errors import VideoBertError
from videobert.models.hf_interop import from_pretrained_bert, load_text_tokenizer
from videobert.models.visual.tokenizer import VisualTokenizer
from videobert.models.vocab import EXTRA_TOKENS, ROW_MULTIPLE, VIDEO_SEP_TOKEN, VISUAL_TOKEN_PATTERN, JointVocab
from videobert.shards import storage
from videobert.trainer.build import build_tokenizer
from videobert.trainer.checkpoint import consolidated_model
from videobert.trainer.config import TrainConfig, load_config
from videobert.trainer.run_folder import (
    COMPLETE, EXPORT_CONFIG, EXPORT_INFO, CheckpointFolder, RunFolder, latest_complete, read_json,
)


class ModelLoadError(VideoBertError, ValueError):
    """A path that holds no model ``videobert eval`` can read; the message says what it expected."""


@dataclass
class LoadedModel:
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
    config_file: Path | None = None
    """The file ``cfg`` was read from (it came with the model: not the user's, see the README's trust model)."""


def load_model(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """The model at ``path`` (see module doc), in eval mode on ``device``."""
    path = Path(path)
    run = RunFolder(path)
    if run.is_run():
        newest = latest_complete(run.checkpoints)
        if newest is None:
            raise ModelLoadError(f"{run.checkpoints} holds no complete checkpoint (none has its {COMPLETE} marker)")
        path = newest
    if CheckpointFolder(path).is_complete():
        loaded = _from_checkpoint(CheckpointFolder(path))
    elif (path / "config.json").is_file():
        loaded = _from_export(path)
    else:
        raise ModelLoadError(f"{path} is neither a run folder, a complete checkpoint folder (step-N with {COMPLETE}) "
                             "nor an exported transformers directory (config.json)")
    loaded.model.to(device).eval()
    return loaded


def _from_checkpoint(ckpt: CheckpointFolder) -> LoadedModel:
    cfg = load_config(ckpt.config)
    model = consolidated_model(ckpt.path)
    codebook_hash = ckpt.read_trainer_state(0).get("codebook_hash") or None
    return LoadedModel(model=model, tokenizer=build_tokenizer(cfg), vocab=model.config.vocab, cfg=cfg, source=ckpt.path,
                       step=int(ckpt.marker()["step"]), codebook_hash=codebook_hash, run_dir=ckpt.path.parent.parent,
                       config_file=ckpt.config)


WEIGHTS_FILE = "model.safetensors"
"""The only weights file an export is read from."""


def _from_export(folder: Path) -> LoadedModel:
    info = export_info(folder)
    if not (folder / WEIGHTS_FILE).is_file():
        raise ModelLoadError(f"{folder} has no {WEIGHTS_FILE}: exports are read from safetensors only (never pickle)")
    tokenizer = load_text_tokenizer(folder)
    vocab = joint_vocab_of_export(folder, tokenizer)
    config_file = folder / EXPORT_CONFIG
    cfg = load_config(config_file) if config_file.is_file() else None
    model = from_pretrained_bert(folder, vocab)
    return LoadedModel(model=model, tokenizer=tokenizer, vocab=vocab, cfg=cfg, source=folder, step=info.get("step"),
                       codebook_hash=info["codebook_hash"], run_dir=None, config_file=config_file)


def export_info(folder: Path) -> dict[str, Any]:
    """An exported directory's ``EXPORT_INFO``, its completion marker (written last by ``videobert export``)."""
    path = folder / EXPORT_INFO
    if not path.is_file():
        raise ModelLoadError(f"{folder} is not a complete VideoBERT export: it lacks {EXPORT_INFO}, which "
                             "`videobert export` writes last; export the checkpoint again")
    try:
        info = read_json(path)
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path} is damaged ({e}); export the checkpoint again") from None
    if not isinstance(info, dict) or not isinstance(info.get("codebook_hash"), str):
        raise ModelLoadError(f"{path} does not name the codebook the model was trained with; export the checkpoint again")
    return info


def joint_vocab_of_export(folder: Path, tokenizer: Any) -> JointVocab:
    """The joint vocabulary an exported directory's vocab.txt lays out (``JointVocab.added_tokens``)."""
    words = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    if VIDEO_SEP_TOKEN not in words:
        raise ModelLoadError(f"{folder}/vocab.txt has no {VIDEO_SEP_TOKEN} token: not a VideoBERT export "
                             "(write one with `videobert export`)")
    text_size = words.index(VIDEO_SEP_TOKEN)
    visual = words[text_size + len(EXTRA_TOKENS) :]
    num_visual = next((i for i, w in enumerate(visual) if not VISUAL_TOKEN_PATTERN.match(w)), len(visual))
    rows = int(read_json(folder / "config.json")["vocab_size"])
    ids = {name: int(tokenizer.convert_tokens_to_ids(getattr(tokenizer, f"{name}_token")))
           for name in ("cls", "sep", "mask", "pad", "unk")}
    for multiple in (ROW_MULTIPLE, rows):  # our exports round the table; other BERT directories may not
        vocab = JointVocab(text_vocab_size=text_size, num_visual_tokens=num_visual, pad_to_multiple_of=multiple,
                           **{f"{k}_id": v for k, v in ids.items()})
        if vocab.size_padded == rows:
            return vocab
    raise ModelLoadError(f"{folder}: config.json has {rows} word rows but vocab.txt lays out {vocab.size}")


def visual_tokenizer_for(loaded: Any, codebook: str | None, encoder_weights: str | None, device: torch.device):
    """The visual tokenizer of ``codebook`` (default: the run's ``data.codebook``), checked against the
    model's codebook; None when no codebook is known."""

    cfg = loaded.cfg
    path = codebook or (cfg.data.codebook if cfg else None)
    if not path:
        return None
    if not codebook and storage.scheme(path) not in (None, *storage.TRUSTED_SCHEMES):
        raise ModelLoadError(f"the model's config names its codebook at {storage.shown(path)}, an address a file "
                             "that came with a model may not name (README: Trust): name it with --codebook")
    weights = encoder_weights or (cfg.data.encoder_weights if cfg else "")
    visual = VisualTokenizer.from_codebook(storage.local_file(path), **({"weights": weights} if weights else {})).to(device).eval()
    if loaded.codebook_hash:
        visual.codebook.check_hash(loaded.codebook_hash, f"the model (name its codebook with --codebook, not {path})")
    return visual
