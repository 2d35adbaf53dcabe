"""Export a checkpoint as a transformers ``BertForPreTraining`` directory.

  videobert export runs/demo/train --out runs/demo/export          # the newest complete checkpoint
  videobert export runs/demo/train/checkpoints/step-300 --out DIR   # a given one

The directory loads with ``transformers.BertForPreTraining.from_pretrained`` and
``AutoTokenizer.from_pretrained`` (the joint vocabulary: text WordPieces, ``[>]``, the visual words
``[V00000]``..., each one id; ``tokenizer(text, visual_words)`` lays out ``[CLS] text [>] video
[SEP]``: ``models.hf_interop.joint_tokenizer``), and ``videobert eval DIR`` evaluates it. Beside the weights it keeps the run's
config (``videobert-run.yaml``) and ``videobert.json`` (the step, the checkpoint it came from and the
hash of the codebook whose visual words it knows).

The directory is written under a temporary name beside ``--out``, ``videobert.json`` last, and renamed
into place once complete, so an interrupted export never leaves a mix of new and old files: ``--out``
holds the previous export or the new one. An existing ``--out`` that is not an export is not touched.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from videobert.models.hf_interop import export_pretrained
from videobert.trainer.config import TrainConfig, save_config
from videobert.trainer.evaluation.load import ModelLoadError, load_model
from videobert.trainer.run_folder import EXPORT_CONFIG, EXPORT_INFO, write_json


def export_checkpoint(path: str | Path, out: str | Path) -> Path:
    """Write the checkpoint at ``path`` (a run folder or a step-N folder) to the directory ``out``."""

    loaded = load_model(path)
    if loaded.run_dir is None or loaded.cfg is None:
        raise ModelLoadError(f"{path} is already an exported directory; export a run folder or a step-N checkpoint")
    return write_export(loaded.model, loaded.tokenizer, loaded.cfg, out, step=loaded.step,
                        checkpoint=str(loaded.source.resolve()), codebook_hash=loaded.codebook_hash)


def write_export(model, tokenizer, cfg: TrainConfig, out: str | Path, *, step: int | None, checkpoint: str | None,
                 codebook_hash: str | None) -> Path:
    """``model`` as a transformers directory, with the run's config and identity beside it (see the
    module doc for how it is put in place)."""

    out = Path(out)
    _check_replaceable(out)
    partial = out.with_name(f".{out.name}{_PARTIAL}")
    shutil.rmtree(partial, ignore_errors=True)  # what an interrupted export left
    export_pretrained(model, partial, tokenizer)
    save_config(cfg, partial / EXPORT_CONFIG)
    write_json(partial / EXPORT_INFO, {"step": step, "checkpoint": checkpoint, "codebook_hash": codebook_hash})
    _sync_tree(partial)
    _put_in_place(partial, out)
    return out


_PARTIAL = ".partial"
_PREVIOUS = ".previous"


def _check_replaceable(out: Path) -> None:
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_INFO).is_file():
        raise ModelLoadError(f"--out {out} holds files that are not a VideoBERT export; choose an empty or new folder")
    if out.exists() and not out.is_dir():
        raise ModelLoadError(f"--out {out} is a file; choose a folder")


def _put_in_place(partial: Path, out: Path) -> None:
    """Rename the complete ``partial`` to ``out``; a previous export moves aside first and goes last."""
    previous = out.with_name(f".{out.name}{_PREVIOUS}")
    shutil.rmtree(previous, ignore_errors=True)
    if out.exists():
        os.replace(out, previous)
    os.replace(partial, out)
    _sync(out.parent)
    shutil.rmtree(previous, ignore_errors=True)


def _sync_tree(folder: Path) -> None:
    """Every file of ``folder`` and the folder itself on disk before it is renamed into place."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _sync(folder)


def _sync(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a run folder (its newest complete checkpoint) or a step-N checkpoint folder")
    parser.add_argument("--out", required=True, help="the directory to write")


def run(args: argparse.Namespace) -> int:
    out = export_checkpoint(args.checkpoint, args.out)
    print(f"exported {args.checkpoint} to {out}")
    return 0
