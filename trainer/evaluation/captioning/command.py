"""Captioning from frozen VideoBERT features (the paper's Table 3), and linear probes on the same features.

  videobert caption runs/demo/train --train runs/demo/tokens/train-labelled --heldout runs/demo/tokens/eval \\
      --labels runs/demo/corpus/labels.jsonl --vocabulary runs/demo/corpus/vocabulary.json \\
      --clips runs/demo/clips/eval
  torchrun --nproc_per_node 4 -m videobert.trainer.evaluation.captioning.command runs/large ...   # one row per rank

MODEL is a run folder, a step-N checkpoint folder or an exported directory (``trainer.evaluation.load``).
``--train`` and ``--heldout`` are token shards (written with ``tokenize --keep-features`` for the
encoder rows) or clip shards of labelled segments, one sample per segment whose text is its reference
caption: for YouCook2, shards prepared from its annotations (``shards prepare --transcripts
youcook2_annotations.json``); for the synthetic corpus, from ``annotations.json``.

The frozen model turns every segment into features (``trainer.evaluation.captioning.features``); then
``--captioners`` captioners (``trainer.evaluation.captioning.captioner``; 3 by default, trained alike from
different seeds) per row of the table are trained on the training segments and caption the held-out ones:

    no video             the captioner without input: a language model's best constant sentence
    clip encoder         the segment's mean clip-encoder feature (the paper's "S3D" row)
    VideoBERT            VideoBERT's features
    VideoBERT + encoder  both, side by side

scored with BLEU-3/4, METEOR, ROUGE-L and CIDEr (``trainer.evaluation.captioning.metrics``): a row's
scores are its captioners' mean, and their intervals, like the paired differences that check Table 3's
order, resample the captioners as well as the held-out segments, so a verdict holds across another
training of the captioners, not only another draw of segments. With ``--labels`` and
``--vocabulary``, linear probes (``trainer.evaluation.captioning.probes``) read the verb and the noun from
the encoder's and VideoBERT's features. Everything goes to ``--out`` (default: ``RUN/caption``;
``trainer.run_folder.CaptionFolder`` lists the files). A rerun resumes: features that match are reused,
each captioner continues from its newest complete checkpoint. Under a launcher every rank reads the
features and the ranks share the captioners; rank 0 scores and writes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml

from videobert.models.errors import VideoBertError
from videobert.shards import reader
from videobert.shards.options import Flag, add_config_arguments, config_from_args
from videobert.trainer import distributed
from videobert.trainer.evaluation import generate, report
from videobert.trainer.evaluation.captioning.config import PAPER_ORDER, ROW_LABELS, ROWS, CaptionConfig
from videobert.trainer.evaluation.captioning.features import LabelledSegment
from videobert.trainer.evaluation.captioning.metrics import CaptionScorer, combine_captioners, paired_difference
from videobert.trainer.evaluation.captioning.probes import probe_labels, run_probes
from videobert.trainer.evaluation.captioning.rows import FeatureSets, read_feature_sets, train_rows
from videobert.trainer.evaluation.labels import read_labels, read_vocabulary
from videobert.trainer.evaluation.load import load_model
from videobert.trainer.evaluation.tables import format_caption_tables
from videobert.trainer.run_folder import CaptionFolder, RunFolder, write_text_atomic


def caption(config: CaptionConfig) -> dict[str, Any] | None:
    """Features, captioners, scores and probes (see module doc); rank 0 returns the results."""

    dist_info = distributed.init_distributed()
    together = False
    try:
        results = _caption(config, load_model(config.model, dist_info.device), dist_info.device)
        together = True
        return results
    finally:
        distributed.leave_distributed(dist_info, together)


def _caption(config: CaptionConfig, loaded: Any, device: torch.device) -> dict[str, Any] | None:
    started = time.perf_counter()
    if not config.train or not config.heldout:
        raise VideoBertError("name the labelled training segments (--train) and the held-out ones (--heldout)")
    folder = CaptionFolder(Path(config.out) if config.out else _default_out(loaded))
    _claim(folder, config)
    scorer = CaptionScorer(use_java=None if config.java else False) if distributed.is_main() else None
    if scorer is not None:
        scorer.start()  # METEOR loads its tables while the captioners train
    try:
        sets = read_feature_sets(config, loaded, device, folder)
        timing = {"features": time.perf_counter() - started}
        captions = train_rows(config, sets, folder, device)
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
# scores, probes, report


def _finish(config: CaptionConfig, loaded: Any, sets: FeatureSets, captions: dict[str, list[list[str]]], scorer,
            folder: CaptionFolder, timing: dict[str, float], started: float) -> dict[str, Any]:

    began = time.perf_counter()
    references = {s.key: [s.caption] for s in sets.heldout}
    rows = [row for row in config.rows if row in captions]
    each = scorer.score_sets(references, {f"{row}/{k}": dict(zip(references, hypotheses))
                                          for row in rows for k, hypotheses in enumerate(captions[row])})
    scored = {row: combine_captioners([each[f"{row}/{k}"] for k in range(len(captions[row]))]) for row in rows}
    table = {row: scores.as_dict() for row, scores in scored.items()}
    timing["scoring"] = time.perf_counter() - began
    results: dict[str, Any] = {
        "model": {"source": str(loaded.source), "step": loaded.step}, "rows": table,
        "row_labels": {r: ROW_LABELS[r] for r in table},
        "order": [{"better": better, "than": than, **paired_difference(scored[better], scored[than])}
                  for better, than in PAPER_ORDER if better in scored and than in scored],
        "skipped_rows": [r for r in config.rows if r not in captions],
        "train_segments": len(sets.train), "heldout_segments": len(sets.heldout),
        "distinct_references": len({s.caption for s in sets.heldout}),
        "decoding": config.decoding + (f" (beam {config.beam})" if config.decoding == "beam" else ""),
        "captioners": config.captioners,
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


def _examples(heldout: Sequence[LabelledSegment], captions: dict[str, list[list[str]]], count: int) -> list[dict[str, Any]]:
    """``count`` held-out segments spread over the set, with every row's first captioner's caption."""
    picks = np.unique(np.linspace(0, len(heldout) - 1, min(count, len(heldout))).round().astype(int)) if count else []
    return [{"key": heldout[i].key, "reference": heldout[i].caption, **{row: c[0][i] for row, c in captions.items()}}
            for i in picks]


def _examples_picture(config: CaptionConfig, examples: list[dict[str, Any]], folder: CaptionFolder) -> bool:
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
    vocabulary = read_vocabulary(config.vocabulary)
    labels = read_labels(config.labels, vocabulary)
    train, test = probe_labels(sets.train, labels, vocabulary), probe_labels(sets.heldout, labels, vocabulary)
    if not len(train.rows) or not len(test.rows):
        return {"skipped": "no labelled segments in one of the sets"}
    accuracies = run_probes(sets.matrices, train, test, seed=config.seed)
    return {"accuracy": accuracies, "train_segments": int(len(train.rows)), "heldout_segments": int(len(test.rows)),
            "unlabelled": train.unlabelled + test.unlabelled}


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
    parser.add_argument("--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    results = caption(config_from_args(CaptionConfig, args))
    if results is not None:
        print(format_caption_tables(results))
        print(f"\nreport: {results['report']}")
    return 0


if __name__ == "__main__":  # `python -m videobert.trainer.evaluation.captioning.command`, as launchers start it
    from videobert.trainer.cli import entry

    entry(["caption", *sys.argv[1:]])
