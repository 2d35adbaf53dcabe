"""Export a checkpoint as a transformers ``BertForPreTraining`` directory.

  videobert export runs/demo/train --out runs/demo/export          # the newest complete checkpoint
  videobert export runs/demo/train/checkpoints/step-300 --out DIR   # a given one

The directory loads with ``transformers.BertForPreTraining.from_pretrained`` and
``AutoTokenizer.from_pretrained`` (the joint vocabulary: text WordPieces, ``[>]``, the visual words
``[V00000]``..., each one id; ``tokenizer(text, visual_words)`` lays out ``[CLS] text [>] video
[SEP]``: ``models.hf_interop.joint_tokenizer``), and ``videobert eval DIR`` evaluates it. Beside the weights it keeps the run's
config (``videobert-run.yaml``) and ``videobert.json`` (the step, the checkpoint it came from and the
hash of the codebook whose visual words it knows).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.config import TrainConfig, save_config
from trainer.run_folder import EXPORT_CONFIG, EXPORT_INFO, write_json


def export_checkpoint(path: str | Path, out: str | Path) -> Path:
    """Write the checkpoint at ``path`` (a run folder or a step-N folder) to the directory ``out``."""
    from trainer.evaluation.load import ModelLoadError, load_model

    loaded = load_model(path)
    if loaded.cfg is None:
        raise ModelLoadError(f"{path} is already an exported directory")
    return write_export(loaded.model, loaded.tokenizer, loaded.cfg, out, step=loaded.step,
                        checkpoint=str(loaded.source.resolve()), codebook_hash=loaded.codebook_hash)


def write_export(model, tokenizer, cfg: TrainConfig, out: str | Path, *, step: int | None, checkpoint: str | None,
                 codebook_hash: str | None) -> Path:
    """``model`` as a transformers directory, with the run's config and identity beside it."""
    from models.hf_interop import export_pretrained

    out = Path(out)
    export_pretrained(model, out, tokenizer)
    save_config(cfg, out / EXPORT_CONFIG)
    write_json(out / EXPORT_INFO, {"step": step, "checkpoint": checkpoint, "codebook_hash": codebook_hash})
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a run folder (its newest complete checkpoint) or a step-N checkpoint folder")
    parser.add_argument("--out", required=True, help="the directory to write")


def run(args: argparse.Namespace) -> int:
    from trainer.evaluation.load import ModelLoadError

    try:
        out = export_checkpoint(args.checkpoint, args.out)
    except (ModelLoadError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} to {out}")
    return 0
