"""The rows of the captioning table: the frozen features each row reads (computed once, cached in the
output folder and reused by a rerun that matches them), and the captioners of each row (one or
more, trained alike from different seeds) trained on the training segments and decoding the
held-out ones. Under a launcher the ranks share the captioners."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch

from videobert.models.errors import VideoBertError
from videobert.shards import reader
from videobert.trainer import distributed
from videobert.trainer.evaluation.captioning.captioner import CaptionWords, beam_decode, greedy_decode
from videobert.trainer.evaluation.captioning.config import ROWS, CaptionConfig
from videobert.trainer.evaluation.captioning.features import (
    LabelledSegment, encoder_matrix, feature_prompt, read_segments, videobert_features,
)
from videobert.trainer.evaluation.captioning.training import one_thread_on_cpu, train_captioner
from videobert.trainer.evaluation.load import visual_tokenizer_for
from videobert.trainer.evaluation.report import write_jsonl
from videobert.trainer.run_folder import CaptionFolder


@dataclass
class FeatureSets:
    """The segments of both sets and their feature matrices by source (``videobert``, ``encoder``)."""

    train: list[LabelledSegment]
    heldout: list[LabelledSegment]
    matrices: dict[str, tuple[np.ndarray, np.ndarray]]
    """Source -> (training (N, d), held-out (M, d))."""
    reused: bool = False


# ---------------------------------------------------------------------------------------------
# features


def read_feature_sets(config: CaptionConfig, loaded: Any, device: torch.device, folder: CaptionFolder) -> FeatureSets:
    """Both sets' segments and features; reused from ``folder`` when they were taken the same way."""

    cfg = loaded.cfg
    visual = visual_tokenizer_for(loaded, config.codebook, config.encoder_weights, device)
    train = read_segments(reader.resolve_shards(list(config.train)), visual)
    heldout = read_segments(reader.resolve_shards(list(config.heldout)), visual)
    if not train or not heldout:
        raise VideoBertError(f"--train ({len(train)} segments) and --heldout ({len(heldout)}) must both hold segments")
    identity = _feature_identity(config, loaded, train, heldout)
    cached = _read_cached(folder, identity)
    if cached is not None:
        return FeatureSets(train, heldout, cached, reused=True)
    prompt = feature_prompt(loaded.tokenizer, loaded.vocab.mask_id, config.template)
    max_seq_len = config.max_seq_len or (cfg.data.max_seq_len if cfg else 128)
    matrices = {"videobert": tuple(videobert_features(loaded.model, loaded.vocab, prompt, [s.tokens for s in part],
                                                      max_seq_len=max_seq_len, device=device) for part in (train, heldout))}
    encoder = (encoder_matrix(train), encoder_matrix(heldout))
    if encoder[0] is not None and encoder[1] is not None:
        matrices["encoder"] = encoder
    if distributed.is_main():
        _write_cached(folder, identity, matrices)
    return FeatureSets(train, heldout, matrices)


def _feature_identity(config: CaptionConfig, loaded: Any, train: Sequence[LabelledSegment],
                      heldout: Sequence[LabelledSegment]) -> dict[str, Any]:
    import hashlib

    keys = hashlib.sha256("\n".join(s.key for s in (*train, *heldout)).encode()).hexdigest()[:16]
    return {"model": str(loaded.source.resolve()), "step": loaded.step, "template": config.template,
            "max_seq_len": config.max_seq_len, "train": list(config.train), "heldout": list(config.heldout),
            "segments": keys}


def _read_cached(folder: CaptionFolder, identity: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    from safetensors import safe_open

    if not folder.features.is_file():
        return None
    with safe_open(str(folder.features), framework="numpy") as f:
        if json.loads((f.metadata() or {}).get("identity", "null")) != identity:
            return None
        names = {k.split("/")[0] for k in f.keys()}
        return {n: (f.get_tensor(f"{n}/train"), f.get_tensor(f"{n}/heldout")) for n in sorted(names)}


def _write_cached(folder: CaptionFolder, identity: dict[str, Any], matrices: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    import os

    from safetensors.numpy import save_file

    tensors = {f"{n}/{part}": np.ascontiguousarray(m[i]) for n, m in matrices.items() for i, part in enumerate(("train", "heldout"))}
    partial = folder.features.with_name(folder.features.name + ".partial")
    save_file(tensors, str(partial), metadata={"identity": json.dumps(identity)})
    os.replace(partial, folder.features)


def row_features(sets: FeatureSets, row: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(training, held-out, slot widths) of one row: its sources side by side (VideoBERT as two slots)."""
    parts_train, parts_held, slots = [], [], []
    for source in ROWS[row]:
        train, held = sets.matrices[source]
        parts_train.append(train)
        parts_held.append(held)
        slots += [train.shape[1] // 2] * 2 if source == "videobert" else [train.shape[1]]
    if not slots:
        return np.zeros((len(sets.train), 0), np.float32), np.zeros((len(sets.heldout), 0), np.float32), []
    return np.concatenate(parts_train, axis=1), np.concatenate(parts_held, axis=1), slots


# ---------------------------------------------------------------------------------------------
# captioners


def train_rows(config: CaptionConfig, sets: FeatureSets, folder: CaptionFolder, device: torch.device) -> dict[str, list[list[str]]]:
    """Each row's captions of the held-out segments, one list per captioner (``config.captioners`` per
    row); the ranks share the (row, captioner) pairs and every rank returns them all. Rank 0 writes
    each row's ``captions.jsonl``."""
    from torch.utils.tensorboard import SummaryWriter

    rows = [r for r in config.rows if all(s in sets.matrices for s in ROWS[r])]
    units = [(row, member) for row in rows for member in range(config.captioners)]
    words = CaptionWords.from_captions([s.caption for s in sets.train])
    settings = config.settings()
    trained_alike = {k: v for k, v in asdict(settings).items() if k != "captioners"}  # not a captioner's own setting
    rank, world_size = distributed.world()
    mine = distributed.share(units, rank, world_size)
    features = {row: row_features(sets, row) for row in dict.fromkeys(units[i][0] for i in mine)}
    writer = SummaryWriter(log_dir=str(folder.tensorboard)) if mine else None
    done = []
    try:
        for index in mine:
            row, member = units[index]
            train_x, held_x, slots = features[row]
            identity = {"settings": trained_alike, "features": list(ROWS[row]), "train": len(sets.train)}
            model = train_captioner(row, list(ROWS).index(row), train_x, slots, [s.caption for s in sets.train], words,
                                    settings, folder.row_checkpoints(row, member), identity, writer,
                                    progress=config.progress and distributed.is_main(), device=device, member=member)
            done.append((row, member, decode(model.cpu(), words, held_x, config)))
    finally:
        if writer is not None:
            writer.close()
    found: dict[str, list[list[str]]] = {row: [[] for _ in range(config.captioners)] for row in rows}
    for row, member, hypotheses in distributed.gather_lists(done):
        found[row][member] = hypotheses
    if distributed.is_main():
        for row, captions in found.items():
            _write_captions(folder, row, sets.heldout, captions)
    return found


def decode(model, words, features: np.ndarray, config: CaptionConfig, batch_size: int = 64) -> list[str]:
    """The captioner's sentence for every row of ``features``."""

    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    out: list[str] = []
    with one_thread_on_cpu("cpu"):
        for start in range(0, len(x), batch_size):
            chunk = x[start : start + batch_size]
            ids = beam_decode(model, chunk, config.beam) if config.decoding == "beam" else greedy_decode(model, chunk)
            out += [words.decode(i) for i in ids]
    return out


def _write_captions(folder: CaptionFolder, row: str, segments: Sequence[LabelledSegment],
                    captions: Sequence[Sequence[str]]) -> None:
    """One line per held-out segment: its reference, the first captioner's caption and every captioner's."""
    write_jsonl(folder.row_captions(row), [{"key": s.key, "video": s.video, "start": s.start, "end": s.end,
                                            "reference": s.caption, "caption": each[0], "captions": list(each)}
                                           for s, each in zip(segments, zip(*captions))])
