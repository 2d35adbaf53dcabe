"""The whole pipeline on the built-in synthetic corpus, in one command, on a laptop or a GPU node.

  videobert demo                      # into runs/demo-<date>-<time>
  videobert demo --out runs/demo      # re-running into the same folder resumes every stage

Stages: render the synthetic instructional videos (H.264, with speech-like transcripts) ->
prepare clip shards (train, held-out, and the labelled segments of both splits: the held-out ones
for zero-shot evaluation, retrieval and captioning, the training ones to train the captioners) ->
fit a small hierarchical k-means codebook on the built-in clip encoder's features -> tokenize (the
labelled segments with their encoder features) -> pretrain the demo preset (the packaged MiniLM)
with DeepSpeed ZeRO-3 on every GPU, else on the CPU -> held-out accuracies beside their chance
levels -> captioning from the frozen features and linear probes -> the evaluation report.
Everything lands in one run folder, named at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from videobert.models.visual.codebook import CODEBOOK_FILE, Codebook
from videobert.shards.fit_codebook import FitCodebookConfig, fit_codebook
from videobert.shards.options import add_config_arguments, config_from_args
from videobert.shards.prepare import PrepareConfig
from videobert.shards.prepare import prepare as run_prepare
from videobert.shards.synthetic.corpus import SynthConfig, render_corpus
from videobert.shards.tokenize_clips import TokenizeConfig
from videobert.shards.tokenize_clips import tokenize as run_tokenize
from videobert.trainer.config import RECIPES_DIR, load_config, shipped_file
from videobert.trainer.evaluation.captioning.command import caption as run_caption
from videobert.trainer.evaluation.captioning.config import CaptionConfig
from videobert.trainer.evaluation.evaluate import EvalConfig
from videobert.trainer.evaluation.evaluate import evaluate as run_evaluation
from videobert.trainer.evaluation.tables import format_tables
from videobert.trainer.run_folder import RunFolder, read_json
from videobert.trainer.train import train

RECIPE = str(shipped_file(RECIPES_DIR) / "demo.yaml")
"""The shipped recipe the demo trains with (``launch/recipes/demo.yaml``)."""


@dataclass(frozen=True, kw_only=True)
class DemoSettings:
    """The demo's sizes: small enough for minutes on 2 CPU cores, large enough to learn from."""

    train_videos: int = 40
    """Videos rendered for training."""
    heldout_videos: int = 30
    """Videos rendered for the held-out evaluation. Every held-out figure is a sample of them: with 10
    videos (about 85 held-out segments) the same trained model's alignment ROC-AUC read 0.79 on its
    own held-out videos and 0.84 on 40; 30 keep the sampling spread of a figure near half of that."""
    seed: int = 0
    """Seed of the corpus, the codebook and the run."""
    fps: float = 10.0
    """Decoded frame rate (the paper: 20; the clip stays 1.5 s)."""
    size: int = 64
    """Decoded frame size (centre crop)."""
    clip_len: int = 15
    """Frames per clip."""
    samples_per_shard: int = 48
    """Samples per shard at most (several shards, so that loader workers split them)."""
    depth: int = 2
    """Levels of the k-means tree."""
    branching: int = 7
    """Children per node (2 x 7: 49 visual words)."""
    steps: int | None = None
    """Training steps (default: the demo recipe's)."""
    heldout_every_steps: int | None = None
    """Held-out pass every N training steps, for the report's curve (default: the demo recipe's)."""
    workers: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))
    """Processes for the shard stages."""
    retrieval_segments: int = 48
    """Held-out segments text-video retrieval ranks (S x S joint passes)."""
    captioners: int = 3
    """Captioners per row of the captioning table (their mean is the row; the intervals resample them)."""


CAPTIONER = dict(width=64, ffn=128, encoder_layers=1, decoder_layers=2, steps=300, lr=2e-3, warmup_steps=30,
                 batch_size=32, checkpoint_every=100)
"""The demo's captioner, sized for seconds per row on a CPU core (the same for every row)."""

LABELLED = {"eval": "heldout", "train-labelled": "train"}
"""Shards of labelled segments (one sample per annotated segment) -> the split they come from."""


class Stages:
    """Runs named stages in order, timing each (wall clock and CPU seconds, the stage's child
    processes included), and prints what each produced."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float, float]] = []

    def run(self, name: str, action: Callable[[], str | None]) -> None:
        print(f"\n== {name}", flush=True)
        started, cpu = time.perf_counter(), cpu_seconds()
        note = action()
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        self.times.append((name, seconds, cpu))
        print(f"   {note + ' ' if note else ''}({seconds:.1f} s, {cpu:.1f} CPU s)", flush=True)

    def table(self) -> str:
        wall, cpu = sum(t[1] for t in self.times), sum(t[2] for t in self.times)
        rows = [f"  {name:<34} {seconds:7.1f} s {used:8.1f} CPU s" for name, seconds, used in self.times]
        return "\n".join(["time per stage:", *rows, f"  {'total':<34} {wall:7.1f} s {cpu:8.1f} CPU s"])


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished child processes."""
    import resource

    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def render(out: Path, s: DemoSettings) -> str:
    info = render_corpus(out / "corpus", SynthConfig(train_videos=s.train_videos, heldout_videos=s.heldout_videos,
                                                     seed=s.seed), workers=s.workers)
    splits = ", ".join(f"{split}: {len(ids)} videos, {info.segments[split]} segments, {info.seconds[split] / 60:.1f} min"
                       for split, ids in info.videos.items())
    return splits + (" (reused)" if info.reused else "")


def prepare(out: Path, s: DemoSettings, split: str, transcripts: str, name: str) -> str:
    corpus = out / "corpus" / split
    summary = run_prepare(PrepareConfig(
        videos=(str(corpus / "videos"),), transcripts=(str(corpus / transcripts),), out=str(out / "clips" / name),
        fps=s.fps, size=s.size, clip_len=s.clip_len, max_samples=s.samples_per_shard, workers=s.workers,
        progress=False,
    ))
    return (f"{summary.segments_written} samples in {summary.shards} shards "
            f"({summary.segments_skipped} segments skipped, listed in errors.jsonl)")


def fit(out: Path, s: DemoSettings) -> str:
    path = out / "codebook" / CODEBOOK_FILE
    if path.exists():
        return f"codebook {Codebook.load(path).hash} (reused)"
    summary = fit_codebook(FitCodebookConfig(
        clips=(str(out / "clips" / "train"),), out=str(out / "codebook"), encoder="synthetic",
        depth=s.depth, branching=s.branching, seed=s.seed, progress=False,
    ))
    return f"{summary.num_leaves} visual words ({summary.leaves_used} used) from {summary.clips_used} clips"


def tokenize(out: Path, s: DemoSettings, name: str) -> str:
    summary = run_tokenize(TokenizeConfig(
        clips=(str(out / "clips" / name),), codebook=str(out / "codebook" / CODEBOOK_FILE),
        out=str(out / "tokens" / name), workers=1, progress=False, keep_features=name in LABELLED,
    ))
    return f"{summary.samples_written} samples, {summary.clips} visual tokens"


def train_overrides(out: Path, s: DemoSettings) -> list[str]:
    overrides = [
        f"run_dir={out / 'train'}", f"data.train={out / 'tokens' / 'train'}",
        f"data.heldout={out / 'tokens' / 'heldout'}", f"data.codebook={out / 'codebook' / CODEBOOK_FILE}",
        f"seed={s.seed}",
    ]
    overrides += [f"max_steps={s.steps}"] if s.steps else []
    return overrides + ([f"logging.heldout_every_steps={s.heldout_every_steps}"] if s.heldout_every_steps is not None else [])


def pretrain(out: Path, s: DemoSettings) -> str:
    gpus = torch.cuda.device_count()
    if gpus > 1:
        # One process per GPU; the training process group cannot be created inside this one.
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
               "-m", "videobert.trainer.train", "--config", RECIPE,
               *(f"--{o}" for o in train_overrides(out, s))]
        subprocess.run(cmd, check=True)
    else:

        train(load_config(RECIPE, train_overrides(out, s)))
    held = read_json(RunFolder(out / "train").heldout)
    return f"held-out alignment accuracy {held.get('alignment_acc', 0):.3f} (chance {held.get('alignment_chance', 0):.3f})"


def evaluation_config(out: Path, s: DemoSettings):
    """What the demo evaluates: zero-shot classification of the held-out labelled segments, the
    held-out metrics (from the run's config), and pictures from the held-out labelled clips."""

    corpus = out / "corpus"
    return EvalConfig(model=str(out / "train"), zero_shot=(str(out / "tokens" / "eval"),),
                      labels=str(corpus / "heldout" / "annotations.json"), vocabulary=str(corpus / "vocabulary.json"),
                      clips=(str(out / "clips" / "eval"),), retrieval=(str(out / "tokens" / "eval"),),
                      retrieval_segments=s.retrieval_segments)


def caption_config(out: Path, s: DemoSettings):
    """What the demo captions: the held-out labelled segments, captioners trained on the training ones."""

    corpus = out / "corpus"
    return CaptionConfig(model=str(out / "train"), train=(str(out / "tokens" / "train-labelled"),),
                         heldout=(str(out / "tokens" / "eval"),), labels=str(corpus / "labels.jsonl"),
                         vocabulary=str(corpus / "vocabulary.json"), clips=(str(out / "clips" / "eval"),),
                         seed=s.seed, captioners=s.captioners, progress=False, **CAPTIONER)


def caption(out: Path, s: DemoSettings) -> str:
    results = run_caption(caption_config(out, s))
    rows = results["rows"]
    return ", ".join(f"{row} CIDEr {r['cider']:.2f} BLEU-4 {100 * r['bleu4']:.1f}" for row, r in rows.items())


def evaluate(out: Path, s: DemoSettings) -> str:
    results = run_evaluation(evaluation_config(out, s))
    z = results["zero_shot"]
    return (f"zero-shot top-1 verb {100 * z['cross_modal_verb_top1']:.1f} %, noun {100 * z['cross_modal_noun_top1']:.1f} % "
            f"(chance {100 * z['chance_verb_top1']:.1f} / {100 * z['chance_noun_top1']:.1f} %); report {results['report']}")


def run_demo(out: Path, settings: DemoSettings) -> Stages:
    stages = Stages()
    stages.run("render the synthetic corpus", lambda: render(out, settings))
    shards = [("train", "captions.json", "train"), ("heldout", "captions.json", "heldout"),
              *((split, "annotations.json", name) for name, split in LABELLED.items())]
    for split, transcripts, name in shards:
        stages.run(f"prepare clip shards: {name}", lambda: prepare(out, settings, split, transcripts, name))
    stages.run("fit the visual codebook", lambda: fit(out, settings))
    for _, _, name in shards:
        stages.run(f"tokenize: {name}", lambda: tokenize(out, settings, name))
    stages.run("pretrain (DeepSpeed ZeRO-3)", lambda: pretrain(out, settings))
    stages.run("caption from frozen features", lambda: caption(out, settings))
    stages.run("evaluate and report", lambda: evaluate(out, settings))
    return stages


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="run folder (default runs/demo-<date>-<time>); an existing one is resumed")
    add_config_arguments(parser, DemoSettings)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out or time.strftime("runs/demo-%Y%m%d-%H%M%S")).absolute()
    settings = config_from_args(DemoSettings, args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    stages = run_demo(out, settings)
    print("\n" + stages.table())
    print(f"\nrun folder: {out}\n  tensorboard --logdir {out / 'train' / 'tensorboard'}")
    results = read_json(RunFolder(out / "train").results)
    print(f"\nreport: {results['report']}\n\n" + format_tables(results))
    return 0
