"""Captioning from frozen VideoBERT features (the paper's Table 3), and linear probes on the same features.

  videobert caption runs/demo/train --train runs/demo/tokens/train-labelled --heldout runs/demo/tokens/eval \\
      --labels runs/demo/corpus/labels.jsonl --vocabulary runs/demo/corpus/vocabulary.json \\
      --clips runs/demo/clips/eval
  torchrun --nproc_per_node 4 -m trainer.evaluation.caption runs/large ...   # one row per rank

MODEL is a run folder, a step-N checkpoint folder or an exported directory (``trainer.evaluation.load``).
``--train`` and ``--heldout`` are token shards (written with ``tokenize --keep-features`` for the
encoder rows) or clip shards of labelled segments, one sample per segment whose text is its reference
caption: for YouCook2, shards prepared from its annotations (``shards prepare --transcripts
youcook2_annotations.json``); for the synthetic corpus, from ``annotations.json``.

The frozen model turns every segment into features (``trainer.evaluation.features``); then one
captioner (``trainer.evaluation.captioner``) per row of the table is trained on the training segments
and captions the held-out ones:

    no video             the captioner without input: a language model's best constant sentence
    clip encoder         the segment's mean clip-encoder feature (the paper's "S3D" row)
    VideoBERT            VideoBERT's features
    VideoBERT + encoder  both, side by side

scored with BLEU-3/4, METEOR, ROUGE-L and CIDEr (``trainer.evaluation.caption_metrics``). With
``--labels`` and ``--vocabulary``, linear probes (``trainer.evaluation.probes``) read the verb and the
noun from the encoder's and VideoBERT's features. Everything goes to ``--out`` (default:
``RUN/caption``; ``trainer.run_folder.CaptionFolder`` lists the files). A rerun resumes: features that
match are reused, each row's captioner continues from its newest complete checkpoint. Under a
launcher every rank reads the features and the ranks share the rows; rank 0 scores and writes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from shards.options import Flag, add_config_arguments, config_from_args
from trainer import distributed
from trainer.evaluation.caption_training import CaptionerSettings
from trainer.evaluation.features import CAPTION_TEMPLATE, LabelledSegment
from trainer.run_folder import CaptionFolder, RunFolder, write_text_atomic

ROWS: dict[str, tuple[str, ...]] = {
    "no_video": (),
    "encoder": ("encoder",),
    "videobert": ("videobert",),
    "videobert_encoder": ("videobert", "encoder"),
}
"""Row name -> the features its captioner reads, in order."""
ROW_LABELS = {"no_video": "no video (best constant sentence)", "encoder": "clip encoder features",
              "videobert": "VideoBERT features", "videobert_encoder": "VideoBERT + clip encoder features"}


class CaptionError(ValueError):
    """Inputs captioning cannot use; the message names them and the fix."""


@dataclass(frozen=True, kw_only=True)
class CaptionConfig(CaptionerSettings):
    """What ``videobert caption`` reads, trains and writes (the captioner's fields: ``CaptionerSettings``)."""

    model: str
    """A run folder, a step-N checkpoint folder, or an exported transformers directory."""
    train: tuple[str, ...] = ()
    """Shards of the labelled training segments (their text is the reference caption)."""
    heldout: tuple[str, ...] = ()
    """Shards of the labelled held-out segments that are captioned and scored."""
    out: str | None = None
    """Output folder (default: RUN/caption, or caption/ inside an exported directory)."""
    rows: tuple[str, ...] = tuple(ROWS)
    """Rows of the table to train (no_video, encoder, videobert, videobert_encoder)."""
    labels: str | None = None
    """Per-segment verb and noun labels for the linear probes (``trainer.evaluation.labels``)."""
    vocabulary: str | None = None
    """Label vocabulary JSON ``{"verbs": [...], "nouns": [...]}`` for the probes."""
    clips: tuple[str, ...] = ()
    """Clip shards of the held-out segments: frames for the captioned examples."""
    codebook: str | None = None
    """Codebook file (default: the run's ``data.codebook``); clip shards need it."""
    encoder_weights: str | None = None
    """Weights of the codebook's clip encoder, when it needs them (default: the run's)."""
    template: str = CAPTION_TEMPLATE
    """The sentence before the video tokens; its [MASK] outputs are half of VideoBERT's feature."""
    max_seq_len: int | None = None
    """Longest sequence (default: the run's ``data.max_seq_len``; 128 without a run config)."""
    decoding: str = "beam"
    """``beam`` or ``greedy``."""
    beam: int = 3
    """Beam width of beam decoding."""
    examples: int = 6
    """Held-out segments shown with their frames and every row's caption."""
    java: bool = True
    """Score with the Java tools (the PTB tokenizer, METEOR) when a Java runtime is present; off: the
    plain tokenization and no METEOR column."""
    overwrite: bool = False
    """Start afresh: remove the rows' checkpoints and the features of an earlier run in ``out``."""
    progress: bool = True
    """Progress bars on rank 0."""

    def __post_init__(self) -> None:
        problems = [f"--rows: unknown row {r!r} (known: {', '.join(ROWS)})" for r in self.rows if r not in ROWS]
        if self.decoding not in ("beam", "greedy"):
            problems.append(f"--decoding {self.decoding!r}: use beam or greedy")
        if self.beam < 1 or self.steps < 1 or self.batch_size < 1 or self.max_words < 1:
            problems.append("--beam, --steps, --batch-size and --max-words must be positive")
        if bool(self.labels) != bool(self.vocabulary):
            problems.append("the probes need both --labels and --vocabulary")
        if problems:
            raise CaptionError("; ".join(problems))

    def settings(self) -> CaptionerSettings:
        return CaptionerSettings(**{k: getattr(self, k) for k in CaptionerSettings.__dataclass_fields__})


@dataclass
class FeatureSets:
    """The segments of both sets and their feature matrices by source (``videobert``, ``encoder``)."""

    train: list[LabelledSegment]
    heldout: list[LabelledSegment]
    matrices: dict[str, tuple[np.ndarray, np.ndarray]]
    """Source -> (training (N, d), held-out (M, d))."""
    reused: bool = False


def caption(config: CaptionConfig) -> dict[str, Any] | None:
    """Features, captioners, scores and probes (see module doc); rank 0 returns the results."""
    from trainer.evaluation.load import load_model

    dist_info = distributed.init_distributed()
    together = False
    try:
        results = _caption(config, load_model(config.model, dist_info.device), dist_info.device)
        together = True
        return results
    finally:
        distributed.leave_distributed(dist_info, together)


def _caption(config: CaptionConfig, loaded: Any, device: torch.device) -> dict[str, Any] | None:
    from trainer.evaluation.caption_metrics import CaptionScorer

    started = time.perf_counter()
    if not config.train or not config.heldout:
        raise CaptionError("name the labelled training segments (--train) and the held-out ones (--heldout)")
    folder = CaptionFolder(Path(config.out) if config.out else _default_out(loaded))
    _claim(folder, config)
    scorer = CaptionScorer(use_java=None if config.java else False) if distributed.is_main() else None
    if scorer is not None:
        scorer.start()  # METEOR loads its tables while the captioners train
    try:
        sets = read_feature_sets(config, loaded, device, folder)
        timing = {"features": time.perf_counter() - started}
        captions = _train_rows(config, sets, folder, device)
        timing["captioners"] = time.perf_counter() - started - timing["features"]
        if scorer is None:
            return None
        return _finish(config, loaded, sets, captions, scorer, folder, timing, started)
    finally:
        if scorer is not None:
            scorer.close()


def _default_out(loaded: Any) -> Path:
    return RunFolder(loaded.run_dir).caption if loaded.run_dir is not None else loaded.source / "caption"


def _claim(folder: CaptionFolder, config: CaptionConfig) -> None:
    """Rank 0 clears what ``--overwrite`` discards and saves the config; every rank then goes on."""
    import yaml

    if distributed.is_main():
        if config.overwrite:
            shutil.rmtree(folder.path / "rows", ignore_errors=True)
            folder.features.unlink(missing_ok=True)
        folder.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder.config, yaml.safe_dump(_plain(asdict(config)), sort_keys=False))
    distributed.any_rank(True)  # a barrier: the folder is ready


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return list(value) if isinstance(value, tuple) else value


# ---------------------------------------------------------------------------------------------
# features


def read_feature_sets(config: CaptionConfig, loaded: Any, device: torch.device, folder: CaptionFolder) -> FeatureSets:
    """Both sets' segments and features; reused from ``folder`` when they were taken the same way."""
    from trainer.evaluation.evaluate import visual_tokenizer_for
    from trainer.evaluation.features import encoder_matrix, feature_prompt, read_segments, videobert_features
    from shards import reader

    cfg = loaded.cfg
    visual = visual_tokenizer_for(loaded, config.codebook, config.encoder_weights, device)
    train = read_segments(reader.resolve_shards(list(config.train)), visual)
    heldout = read_segments(reader.resolve_shards(list(config.heldout)), visual)
    if not train or not heldout:
        raise CaptionError(f"--train ({len(train)} segments) and --heldout ({len(heldout)}) must both hold segments")
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


def _train_rows(config: CaptionConfig, sets: FeatureSets, folder: CaptionFolder, device: torch.device) -> dict[str, list[str]]:
    """Each row this rank trains: its captions of the held-out segments; every rank's, assembled."""
    from torch.utils.tensorboard import SummaryWriter

    from trainer.evaluation.caption_training import train_captioner
    from trainer.evaluation.captioner import CaptionWords

    rows = [r for r in config.rows if all(s in sets.matrices for s in ROWS[r])]
    words = CaptionWords.from_captions([s.caption for s in sets.train])
    rank, world_size = distributed.world()
    mine = distributed.share(rows, rank, world_size)
    writer = SummaryWriter(log_dir=str(folder.tensorboard)) if mine else None
    done = []
    try:
        for index in mine:
            row = rows[index]
            train_x, held_x, slots = row_features(sets, row)
            identity = {"settings": asdict(config.settings()), "features": list(ROWS[row]), "train": len(sets.train)}
            model = train_captioner(row, list(ROWS).index(row), train_x, slots, [s.caption for s in sets.train], words,
                                    config.settings(), folder.row_checkpoints(row), identity, writer,
                                    progress=config.progress and distributed.is_main(), device=device)
            hypotheses = decode(model.cpu(), words, held_x, config)
            _write_captions(folder, row, sets.heldout, hypotheses)
            done.append((row, hypotheses))
    finally:
        if writer is not None:
            writer.close()
    return dict(distributed.gather_lists(done))


def decode(model, words, features: np.ndarray, config: CaptionConfig, batch_size: int = 64) -> list[str]:
    """The captioner's sentence for every row of ``features``."""
    from trainer.evaluation.caption_training import one_thread_on_cpu
    from trainer.evaluation.captioner import beam_decode, greedy_decode

    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    out: list[str] = []
    with one_thread_on_cpu("cpu"):
        for start in range(0, len(x), batch_size):
            chunk = x[start : start + batch_size]
            ids = beam_decode(model, chunk, config.beam) if config.decoding == "beam" else greedy_decode(model, chunk)
            out += [words.decode(i) for i in ids]
    return out


def _write_captions(folder: CaptionFolder, row: str, segments: Sequence[LabelledSegment], hypotheses: Sequence[str]) -> None:
    from trainer.evaluation.report import write_jsonl

    write_jsonl(folder.row_captions(row), [{"key": s.key, "video": s.video, "start": s.start, "end": s.end,
                                            "reference": s.caption, "caption": h} for s, h in zip(segments, hypotheses)])


# ---------------------------------------------------------------------------------------------
# scores, probes, report


def _finish(config: CaptionConfig, loaded: Any, sets: FeatureSets, captions: dict[str, list[str]], scorer,
            folder: CaptionFolder, timing: dict[str, float], started: float) -> dict[str, Any]:
    from trainer.evaluation import report

    began = time.perf_counter()
    references = {s.key: [s.caption] for s in sets.heldout}
    scored = scorer.score_sets(references, {row: dict(zip(references, captions[row])) for row in config.rows if row in captions})
    table = {row: scores.as_dict() for row, scores in scored.items()}
    timing["scoring"] = time.perf_counter() - began
    results: dict[str, Any] = {
        "model": {"source": str(loaded.source), "step": loaded.step}, "rows": table,
        "row_labels": {r: ROW_LABELS[r] for r in table},
        "skipped_rows": [r for r in config.rows if r not in captions],
        "train_segments": len(sets.train), "heldout_segments": len(sets.heldout),
        "distinct_references": len({s.caption for s in sets.heldout}),
        "decoding": config.decoding + (f" (beam {config.beam})" if config.decoding == "beam" else ""),
        "template": config.template, "features_reused": sets.reused, "steps": config.steps,
        "examples": _examples(sets.heldout, captions, config.examples),
    }
    if config.labels:
        results["probes"] = _probes(config, sets)
    pictures = {"examples": _examples_picture(config, results["examples"], folder)}
    timing["total"] = time.perf_counter() - started
    results["timing"] = timing
    report.write_caption_report(folder, results, pictures)
    return results


def _examples(heldout: Sequence[LabelledSegment], captions: dict[str, list[str]], count: int) -> list[dict[str, Any]]:
    picks = np.unique(np.linspace(0, len(heldout) - 1, min(count, len(heldout))).round().astype(int)) if count else []
    return [{"key": heldout[i].key, "reference": heldout[i].caption, **{row: c[i] for row, c in captions.items()}}
            for i in picks]


def _examples_picture(config: CaptionConfig, examples: list[dict[str, Any]], folder: CaptionFolder) -> bool:
    from shards import reader
    from trainer.evaluation import generate

    if not config.clips or not examples:
        return False
    wanted = {e["key"] for e in examples}
    frames = {s.key: s.frames for s in reader.iter_samples(reader.resolve_shards(list(config.clips))) if s.key in wanted}
    shown = [e for e in examples if e["key"] in frames]
    if not shown:
        return False
    rows = [r for r in ROWS if r in shown[0]]
    generate.caption_grid([frames[e["key"]] for e in shown], shown, rows, ROW_LABELS).save(folder.examples)
    return True


def _probes(config: CaptionConfig, sets: FeatureSets) -> dict[str, Any]:
    from trainer.evaluation.labels import read_labels, read_vocabulary
    from trainer.evaluation.probes import probe_labels, run_probes

    vocabulary = read_vocabulary(config.vocabulary)
    labels = read_labels(config.labels, vocabulary)
    train, test = probe_labels(sets.train, labels, vocabulary), probe_labels(sets.heldout, labels, vocabulary)
    if not len(train.rows) or not len(test.rows):
        return {"skipped": "no labelled segments in one of the sets"}
    accuracies = run_probes(sets.matrices, train, test, seed=config.seed)
    return {"accuracy": accuracies, "train_segments": int(len(train.rows)), "heldout_segments": int(len(test.rows)),
            "unlabelled": train.unlabelled + test.unlabelled}


def format_table(results: dict[str, Any]) -> str:
    """The captioning table (and the probes) as plain text."""
    from trainer.evaluation.caption_metrics import METRIC_LABELS, METRICS, format_score

    head = f"{'captioning':<36}" + "".join(f"{METRIC_LABELS[m]:>11}" for m in METRICS)
    lines = [head, "-" * len(head)]
    for row, scores in results["rows"].items():
        lines.append(f"{results['row_labels'][row]:<36}" + "".join(f"{format_score(m, scores[m]):>11}" for m in METRICS))
    tokenizer = next(iter(results["rows"].values()))["tokenizer"] if results["rows"] else ""
    lines.append(f"({results['heldout_segments']} held-out segments, {results['distinct_references']} distinct references; "
                 f"{results['decoding']} decoding; tokens: {tokenizer}; BLEU, METEOR, ROUGE-L in %)")
    probes = results.get("probes", {}).get("accuracy")
    if probes:
        lines += ["", f"{'linear probe (held-out accuracy)':<36}{'verb':>9}{'noun':>9}", "-" * 54]
        for name, label in (("constant", "best constant guess"), ("encoder", "clip encoder features"),
                            ("videobert", "VideoBERT features")):
            if name in probes:
                lines.append(f"{label:<36}{100 * probes[name]['verb']:>8.1f}%{100 * probes[name]['noun']:>8.1f}%")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# command line


FLAGS = {
    "model": Flag(positional=True),
    "train": Flag(metavar="SHARDS"),
    "heldout": Flag(metavar="SHARDS"),
    "clips": Flag(metavar="SHARDS"),
    "rows": Flag(metavar="ROW"),
}
"""Where caption's options differ from their fields' defaults (``shards.options``)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, CaptionConfig, FLAGS)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from models.visual.codebook import CodebookError
    from shards.reader import ShardSpecError
    from trainer.evaluation.caption_training import CaptionTrainingError
    from trainer.evaluation.features import FeatureError
    from trainer.evaluation.labels import LabelError
    from trainer.evaluation.load import ModelLoadError

    try:
        results = caption(config_from_args(CaptionConfig, args))
    except (CaptionError, CaptionTrainingError, FeatureError, LabelError, ModelLoadError, CodebookError,
            ShardSpecError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if results is not None:
        print(format_table(results))
        print(f"\nreport: {results['report']}")
    return 0


if __name__ == "__main__":  # `python -m trainer.evaluation.caption`, as launchers start it
    from trainer.cli import main

    sys.exit(main(["caption", *sys.argv[1:]]))
