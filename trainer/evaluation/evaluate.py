"""Evaluate a pretrained VideoBERT: zero-shot action classification, held-out metrics, text-to-video,
video-to-text, and a report with tables and pictures.

  videobert eval runs/demo/train \\
      --zero-shot runs/demo/tokens/eval --labels runs/demo/corpus/heldout/annotations.json \\
      --vocabulary runs/demo/corpus/vocabulary.json --clips runs/demo/clips/eval
  torchrun --nproc_per_node 2 -m videobert.trainer.evaluation.evaluate runs/demo/train ...   # ranks split the shards
  videobert eval runs/demo/export ...                                    # a `videobert export` directory

MODEL is a run folder (its newest complete checkpoint), a step-N checkpoint folder, or an exported
transformers directory. Each job runs when its inputs are there:

* zero-shot classification (``trainer.evaluation.zeroshot``): ``--zero-shot`` token or clip shards of labelled
  segments (e.g. prepared from YouCook2-form annotations, one sample per labelled segment), labelled by
  ``--labels`` (labels JSON lines or YouCook2-form annotations) with the classes of ``--vocabulary``
  (JSON ``{"verbs": [...], "nouns": [...]}``); ``trainer.evaluation.labels`` describes both files;
* held-out alignment and masked-token metrics (``trainer.evaluation.heldout``): ``--heldout`` shards, by default
  the run's ``data.heldout`` (read from the model's own config, which is not the user's: it may name
  local shards only, unless ``--trust-model-config``; see the README's trust section);
* text-to-video and video-to-text (``trainer.evaluation.generate``): ``--clips`` clip shards supply the pictures
  (and the clips whose words are read); the sentences are ``--prompt`` (repeatable), else the template
  filled with labels of the vocabulary.

Under a launcher (torchrun, deepspeed) every rank evaluates its share of the shards with a full copy
of the model; rank 0 adds up and writes the report. The totals equal a one-process evaluation's.
The report (``report.md``, ``results.json``, PNGs; see ``trainer.evaluation.report``) goes to ``--out``, by
default the run folder (for an exported directory: the directory).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from videobert.models.errors import VideoBertError
from videobert.models.visual.codebook import check_hash
from videobert.shards import reader, schema
from videobert.shards.options import Flag, add_config_arguments, config_from_args
from videobert.trainer import distributed
from videobert.trainer.config import ObjectivesConfig, heldout_sources, shard_specs
from videobert.trainer.evaluation import generate, report
from videobert.trainer.evaluation.captioning.features import read_segments
from videobert.trainer.evaluation.heldout import evaluate_model, sample_tokens
from videobert.trainer.evaluation.labels import read_labels, read_vocabulary
from videobert.trainer.evaluation.load import load_model, visual_tokenizer_for
from videobert.trainer.evaluation.masked_video import evaluate_in_turn, train_counts
from videobert.trainer.evaluation.retrieval import examples as retrieval_examples
from videobert.trainer.evaluation.retrieval import masked_word_scores, retrieval_metrics, score_matrix
from videobert.trainer.evaluation.tables import format_tables
from videobert.trainer.evaluation.zeroshot import (
    PAPER_TEMPLATE, EvalSegment, ZeroShotClassifier, build_prompt, evaluate_zeroshot,
)
from videobert.trainer.run_folder import CaptionFolder, RunFolder, read_json


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """What ``videobert eval`` evaluates and where the report goes."""

    model: str
    """A run folder, a step-N checkpoint folder, or an exported transformers directory."""
    out: str | None = None
    """Report folder (default: the run folder, or the exported directory)."""
    zero_shot: tuple[str, ...] = ()
    """Shards of labelled segments for zero-shot classification (token or clip shards)."""
    labels: str | None = None
    """Per-segment labels: labels JSON lines or YouCook2-form annotations (``trainer.evaluation.labels``)."""
    vocabulary: str | None = None
    """Label vocabulary JSON ``{"verbs": [...], "nouns": [...]}``."""
    heldout: tuple[str, ...] | None = None
    """Held-out shards (None, the default: the run's ``data.heldout``; empty: skip)."""
    clips: tuple[str, ...] = ()
    """Clip shards for the pictures of text-to-video and the clips of video-to-text."""
    retrieval: tuple[str, ...] = ()
    """Shards of held-out segments for text-video retrieval (their text is the caption queried)."""
    retrieval_segments: int = 100
    """Most segments retrieval ranks (it reads every caption with every video: S x S joint passes)."""
    codebook: str | None = None
    """Codebook file (default: the run's ``data.codebook``)."""
    encoder_weights: str | None = None
    """Weights of the codebook's clip encoder, when it needs them (default: the run's)."""
    template: str = PAPER_TEMPLATE
    """Zero-shot sentence with {verb} and {noun} (the paper's by default)."""
    prompts: tuple[str, ...] = ()
    """Text-to-video sentences (none: the template filled with each verb of the vocabulary)."""
    video_length: int = 4
    """Video tokens predicted per text-to-video sentence."""
    max_clips: int = 2000
    """Most clips read from ``clips`` to find representative clips."""
    video_to_text_samples: int = 6
    """Clip samples whose words video-to-text predicts."""
    batch_size: int = 32
    """Examples per forward pass."""
    max_seq_len: int | None = None
    """Longest sequence (default: the run's ``data.max_seq_len``; 128 without a run config)."""
    seed: int | None = None
    """Seed of the held-out masking and negatives (default: the run's)."""
    trust_model_config: bool = False
    """Let the model's own config (its checkpoint's config.yaml or the export's videobert-run.yaml) name
    held-out shards as ``pipe:`` commands or URLs; without it such a file may only name local shards."""


@dataclass
class Context:
    """What every job needs: the model and its companions, the device, the resolved settings."""

    config: EvalConfig
    loaded: Any
    """The ``LoadedModel``."""
    device: torch.device
    max_seq_len: int
    visual: Any = None
    zero_shot_rows: tuple | None = None
    """Rank 0, after zero-shot: (records, problems, label problems, label vocabulary) for the report."""


def evaluate(config: EvalConfig) -> dict[str, Any] | None:
    """Run every job whose inputs are given; rank 0 writes the report and returns the results."""

    started = time.perf_counter()
    dist_info = distributed.init_distributed()
    together = False
    try:
        results = _evaluate(config, load_model(config.model, dist_info.device), dist_info.device, started)
        together = True
        return results
    finally:
        distributed.leave_distributed(dist_info, together)


def _evaluate(config: EvalConfig, loaded: Any, device: torch.device, started: float) -> dict[str, Any] | None:
    cfg = loaded.cfg
    ctx = Context(config=config, loaded=loaded, device=device,
                  max_seq_len=config.max_seq_len or (cfg.data.max_seq_len if cfg else 128))
    ctx.visual = _visual_tokenizer(ctx)
    results: dict[str, Any] = {"model": {"source": str(loaded.source), "step": loaded.step,
                                         "processes": distributed.world()[1]}, "timing": {}}
    jobs = [("zero_shot", zero_shot_job), ("heldout", heldout_job), ("retrieval", retrieval_job)]
    for name, job in jobs:
        began = time.perf_counter()
        if job(ctx, results):
            results["timing"][name] = time.perf_counter() - began
    if not distributed.is_main():
        return None
    began = time.perf_counter()
    pictures = generation_job(ctx, results, _out_dir(ctx))
    pictures["retrieval"] = retrieval_picture(ctx, results, _out_dir(ctx))
    results["timing"]["generation"] = time.perf_counter() - began
    results["seconds"] = time.perf_counter() - started
    return _write(ctx, results, pictures)


def _visual_tokenizer(ctx: Context):
    """The codebook's visual tokenizer, when a codebook is known (needed for clip shards and pictures)."""
    return visual_tokenizer_for(ctx.loaded, ctx.config.codebook, ctx.config.encoder_weights, ctx.device)


# ---------------------------------------------------------------------------------------------
# jobs


TRUST_FLAG = "--trust-model-config"
"""The flag that lets shard specs in a model's own config run commands (``EvalConfig.trust_model_config``)."""


def _resolve(spec: Sequence[str], what: str, ctx: Context, *, from_model: bool = False) -> list[str]:
    """Shard URLs of a spec; token shards must come from the model's codebook. ``from_model``: the spec
    was read from the model's own config, which is not the user's: it may name local shards only
    unless the user trusts it (README: trust)."""

    untrusted = from_model and not ctx.config.trust_model_config
    urls = reader.resolve_shards(
        list(spec), from_file=str(ctx.loaded.config_file) if untrusted else None,
        allow=f"name the shards yourself with {what} SHARDS, or add {TRUST_FLAG} if you trust that file",
    )
    if not urls:
        raise VideoBertError(f"{what}: {list(spec)} names no complete shard")
    # Unreadable samples are the job's to list (it reads them all); here only the kind of the first readable one counts.
    first = next(iter(reader.iter_samples(urls, decode_arrays=False, on_error=lambda url, e: None)), None)
    known = ctx.loaded.codebook_hash
    if first is not None and first.meta.kind == schema.TOKEN_KIND and known:
        check_hash(known, first.meta.codebook_hash, f"{what}: the token shards (the model knows codebook {known}'s words)")
    if first is not None and first.meta.kind == schema.CLIP_KIND and ctx.visual is None:
        raise VideoBertError(f"{what}: clip shards need the codebook to tokenize them: name it with --codebook")
    return urls


def zero_shot_job(ctx: Context, results: dict[str, Any]) -> bool:
    config = ctx.config
    if not config.zero_shot:
        return False
    if not (config.labels and config.vocabulary):
        raise VideoBertError("--zero-shot needs --labels (per-segment verb and noun) and --vocabulary (the classes)")
    vocabulary = read_vocabulary(config.vocabulary)
    labels = read_labels(config.labels, vocabulary)
    urls = _resolve(config.zero_shot, "--zero-shot", ctx)
    r = ctx.loaded
    classifier = ZeroShotClassifier(r.model, r.tokenizer, r.vocab, vocabulary, template=config.template,
                                    max_seq_len=ctx.max_seq_len, device=ctx.device)
    unreadable: list[dict[str, Any]] = []
    shards = _eval_segments(urls, ctx.visual, lambda url, e: unreadable.append({"input": url, "reason": str(e)}))
    outcome = evaluate_zeroshot(classifier, shards, labels, batch_size=config.batch_size)
    unreadable = distributed.gather_lists(unreadable)
    masked = r.tokenizer.decode(list(build_prompt(r.tokenizer, r.vocab.mask_id, config.template).text_ids))
    results["zero_shot"] = outcome.results
    results["zero_shot_summary"] = {
        "shards": list(config.zero_shot), "labels": config.labels, "verbs": len(vocabulary.verbs),
        "nouns": len(vocabulary.nouns), "template": config.template, "template_masked": masked,
        "read": int(outcome.results["segments"]) + len(outcome.problems), "unlabelled": len(outcome.problems),
        "unreadable": len(unreadable), "label_problems": len(labels.problems),
    }
    ctx.zero_shot_rows = (outcome.records, outcome.problems + unreadable, labels.problems, vocabulary)
    return True


def _eval_segments(urls: Sequence[str], visual: Any, on_error) -> Iterator[list]:
    rank, world_size = distributed.world()
    for shard in distributed.share(urls, rank, world_size):
        yield [EvalSegment(key=s.key, video=s.meta.video_id, start=s.meta.start, end=s.meta.end,
                           tokens=sample_tokens(s, visual)) for s in reader.iter_samples([urls[shard]], on_error=on_error)]


def heldout_job(ctx: Context, results: dict[str, Any]) -> bool:
    cfg, config = ctx.loaded.cfg, ctx.config
    from_model = config.heldout is None
    spec = config.heldout if not from_model else tuple(shard_specs(cfg.data.heldout) if cfg else ())
    if not spec:
        return False
    urls = _resolve(spec, "--heldout", ctx, from_model=from_model)
    seed = config.seed if config.seed is not None else (cfg.seed if cfg else 0)

    def figures(shards: list[str]) -> dict[str, Any]:
        return evaluate_model(ctx.loaded.model, ctx.loaded.tokenizer, shards,
                              objectives=cfg.objectives if cfg else ObjectivesConfig(), max_seq_len=ctx.max_seq_len,
                              batch_size=config.batch_size, seed=seed, visual=ctx.visual)

    results["heldout"] = figures(urls)
    results["heldout_source"] = " ".join(spec)
    if from_model and cfg and heldout_sources(cfg.data):  # the run named its held-out sources: each on its own too
        results["heldout_by_source"] = {name: figures(_resolve(paths, "--heldout", ctx, from_model=True))
                                        for name, paths in heldout_sources(cfg.data)}
    results["heldout_video_in_turn"] = _video_in_turn(ctx, urls)
    return True


def _video_in_turn(ctx: Context, urls: list[str]) -> dict[str, float]:
    """Every held-out visual token masked once (``trainer.evaluation.masked_video``), beside the
    unigram of the run's training tokens (token shards; without them, a uniform one)."""
    import numpy as np


    r = ctx.loaded
    counts = np.zeros(r.vocab.num_visual_tokens)
    if r.cfg is not None and r.cfg.data.train:
        try:
            counts = train_counts(reader.resolve_shards(shard_specs(r.cfg.data.train)), r.vocab.num_visual_tokens)
        except reader.ShardSpecError:
            pass  # the training shards moved: the unigram stays uniform, and the table says so
    out = evaluate_in_turn(r.model, r.tokenizer, urls, counts, max_seq_len=ctx.max_seq_len,
                           batch_size=ctx.config.batch_size, visual=ctx.visual)
    out["train_tokens"] = float(counts.sum())
    return out


def retrieval_job(ctx: Context, results: dict[str, Any]) -> bool:
    import numpy as np


    config, r = ctx.config, ctx.loaded
    if not config.retrieval:
        return False
    urls = _resolve(config.retrieval, "--retrieval", ctx)
    segments = read_segments(urls, ctx.visual, limit=config.retrieval_segments)
    if len(segments) < 2:
        raise VideoBertError(f"--retrieval: {list(config.retrieval)} holds {len(segments)} segment(s); ranking needs two or more")
    captions = [s.caption for s in segments]
    scores = score_matrix(r.model, r.tokenizer, r.vocab, captions, [s.tokens for s in segments], max_seq_len=ctx.max_seq_len,
                          device=ctx.device, batch_size=config.batch_size)
    results["retrieval"] = retrieval_metrics(scores, captions)
    results["retrieval"]["source"] = " ".join(config.retrieval)
    keys = [s.key for s in segments]
    results["retrieval"]["examples"] = retrieval_examples(scores, captions, keys)
    results["retrieval"]["examples_ranking"] = "alignment head"
    if config.vocabulary:

        classifier = ZeroShotClassifier(r.model, r.tokenizer, r.vocab, read_vocabulary(config.vocabulary),
                                        template=config.template, max_seq_len=ctx.max_seq_len, device=ctx.device)
        words = masked_word_scores(classifier, captions, [s.tokens for s in segments], config.batch_size)
        results["retrieval"]["masked_words"] = retrieval_metrics(words, captions)
        results["retrieval"]["examples"] = retrieval_examples(np.exp(words), captions, keys)  # scores as probabilities
        results["retrieval"]["examples_ranking"] = "masked words"
    return True


def retrieval_picture(ctx: Context, results: dict[str, Any], out: Path) -> bool:
    """retrieval.png: a few captions and the first clips of the videos they retrieve (rank 0)."""

    shown = results.get("retrieval", {}).get("examples")
    if not shown or not ctx.config.clips:
        return False
    wanted = {k for e in shown for k in e["retrieved"]}
    frames = {s.key: s.frames[0] for s in reader.iter_samples(reader.resolve_shards(list(ctx.config.clips))) if s.key in wanted}
    if not frames:
        return False
    generate.retrieval_grid(shown, frames).save(out / "retrieval.png")
    return True


def generation_job(ctx: Context, results: dict[str, Any], out: Path) -> dict[str, bool]:
    """Text-to-video and video-to-text with their pictures (rank 0 only)."""

    config, r = ctx.config, ctx.loaded
    if not config.clips or ctx.visual is None:
        return {}
    samples = generate.read_clip_samples(reader.resolve_shards(list(config.clips)), config.max_clips)
    sentences = list(config.prompts) or _default_prompts(ctx)
    predictions = [generate.fill_video(r.model, r.tokenizer, r.vocab, s, config.video_length, ctx.device) for s in sentences]
    results["text_to_video"] = [{"sentence": s, "visual_words": p} for s, p in zip(sentences, predictions)]
    pictures = {}
    if sentences:
        clips = generate.nearest_clips(itertools.chain(*predictions), samples, ctx.visual)
        generate.text_to_video_grid(sentences, predictions, clips).save(out / "text_to_video.png")
        pictures["text_to_video"] = True
    shown = samples[: config.video_to_text_samples]
    results["video_to_text"] = generate.video_to_text(r.model, r.tokenizer, r.vocab, shown, ctx.visual,
                                                      template=config.template, max_seq_len=ctx.max_seq_len,
                                                      device=ctx.device)
    if shown:
        generate.video_to_text_grid(shown, results["video_to_text"]).save(out / "video_to_text.png")
        pictures["video_to_text"] = True
    return pictures


def _default_prompts(ctx: Context) -> list[str]:
    """The template filled with each verb of the vocabulary, nouns taken in turn."""

    if not ctx.config.vocabulary:
        return []
    v = read_vocabulary(ctx.config.vocabulary)
    return [ctx.config.template.format(verb=verb, noun=v.nouns[i % len(v.nouns)]) for i, verb in enumerate(v.verbs)]


# ---------------------------------------------------------------------------------------------
# output


def _out_dir(ctx: Context) -> Path:
    r = ctx.loaded
    out = Path(ctx.config.out) if ctx.config.out else (r.run_dir or r.source)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write(ctx: Context, results: dict[str, Any], pictures: dict[str, bool]) -> dict[str, Any]:
    out = _out_dir(ctx)
    if ctx.zero_shot_rows is not None:
        records, problems, label_problems, vocabulary = ctx.zero_shot_rows
        report.write_jsonl(out / "zeroshot.jsonl", records)
        report.write_jsonl(out / "zeroshot_problems.jsonl", problems + label_problems)
        pictures["confusion"] = report.plot_confusion(records, vocabulary.verbs, vocabulary.nouns, out / "zeroshot_confusion.png")
    if ctx.loaded.run_dir is not None:
        pictures["curves"] = report.plot_curves(report.read_curves(ctx.loaded.run_dir), out / "curves.png")
        _add_captioning(CaptionFolder(RunFolder(ctx.loaded.run_dir).caption), out, results)
    report.write_report(out, results, pictures)
    return results


def _add_captioning(folder: CaptionFolder, out: Path, results: dict[str, Any]) -> None:
    """The run's ``videobert caption`` results, when there are any, for the report's captioning section."""
    import os

    if folder.results.is_file():
        captioning = read_json(folder.results)
        captioning["pictures_folder"] = os.path.relpath(folder.path, out) if captioning.get("pictures", {}).get("examples") else None
        results["captioning"] = captioning



# ---------------------------------------------------------------------------------------------
# command line


FLAGS = {
    "model": Flag(positional=True),
    "zero_shot": Flag(metavar="SHARDS"),
    "heldout": Flag(nargs="*", metavar="SHARDS", help="held-out shards (default: the run's data.heldout; the flag "
                    "alone: skip)"),
    "clips": Flag(metavar="SHARDS"),
    "retrieval": Flag(metavar="SHARDS"),
    "prompts": Flag(name="--prompt", action="append", metavar="SENTENCE",
                    help="a text-to-video sentence (default: the template filled with each verb of the vocabulary)"),
}
"""Where eval's options differ from their fields' defaults (``shards.options``)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, EvalConfig, FLAGS)
    parser.add_argument("--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    results = evaluate(config_from_args(EvalConfig, args))
    if results is not None:
        print(format_tables(results))
        print(f"\nreport: {results['report']}")
    return 0


if __name__ == "__main__":  # `python -m videobert.trainer.evaluation.evaluate`, as launchers start it
    from videobert.trainer.cli import entry

    entry(["eval", *sys.argv[1:]])
