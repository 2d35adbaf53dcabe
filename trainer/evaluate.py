"""Evaluate a pretrained VideoBERT: zero-shot action classification, held-out metrics, text-to-video,
video-to-text, and a report with tables and pictures.

  videobert eval runs/demo/train \\
      --zero-shot runs/demo/tokens/eval --labels runs/demo/corpus/heldout/annotations.json \\
      --vocabulary runs/demo/corpus/vocabulary.json --clips runs/demo/clips/eval
  torchrun --nproc_per_node 2 -m trainer.evaluate runs/demo/train ...   # ranks split the shards
  videobert eval runs/demo/export ...                                    # a `videobert export` directory

MODEL is a run folder (its newest complete checkpoint), a step-N checkpoint folder, or an exported
transformers directory. Each job runs when its inputs are there:

* zero-shot classification (``trainer.zeroshot``): ``--zero-shot`` token or clip shards of labelled
  segments (e.g. prepared from YouCook2-form annotations, one sample per labelled segment), labelled by
  ``--labels`` (labels JSON lines or YouCook2-form annotations) with the classes of ``--vocabulary``
  (JSON ``{"verbs": [...], "nouns": [...]}``); ``trainer.labels`` describes both files;
* held-out alignment and masked-token metrics (``trainer.heldout``): ``--heldout`` shards, by default
  the run's ``data.heldout``;
* text-to-video and video-to-text (``trainer.generate``): ``--clips`` clip shards supply the pictures
  (and the clips whose words are read); the sentences are ``--prompt`` (repeatable), else the template
  filled with labels of the vocabulary.

Under a launcher (torchrun, deepspeed) every rank evaluates its share of the shards with a full copy
of the model; rank 0 adds up and writes the report. The totals equal a one-process evaluation's.
The report (``report.md``, ``results.json``, PNGs; see ``trainer.report``) goes to ``--out``, by
default the run folder (for an exported directory: the directory).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from trainer import collect
from trainer.zeroshot import PAPER_TEMPLATE

HELP = "zero-shot classification, held-out metrics, text-to-video, and a report"


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """What ``videobert eval`` evaluates and where the report goes."""

    model: str
    """A run folder, a step-N checkpoint folder, or an exported transformers directory."""
    out: str | None = None
    """Report folder (None: the run folder, or the exported directory)."""
    zero_shot: tuple[str, ...] = ()
    """Shards of labelled segments for zero-shot classification (token or clip shards)."""
    labels: str | None = None
    """Per-segment labels: labels JSON lines or YouCook2-form annotations (``trainer.labels``)."""
    vocabulary: str | None = None
    """Label vocabulary JSON ``{"verbs": [...], "nouns": [...]}``."""
    heldout: tuple[str, ...] | None = None
    """Held-out shards (None: the run's ``data.heldout``; empty: skip)."""
    clips: tuple[str, ...] = ()
    """Clip shards for the pictures of text-to-video and the clips of video-to-text."""
    codebook: str | None = None
    """Codebook file (None: the run's ``data.codebook``)."""
    encoder_weights: str | None = None
    """Weights of the codebook's clip encoder, when it needs them (None: the run's)."""
    template: str = PAPER_TEMPLATE
    prompts: tuple[str, ...] = ()
    video_length: int = 4
    """Video tokens predicted per text-to-video sentence."""
    max_clips: int = 2000
    """Most clips read from ``clips`` to find representative clips."""
    video_to_text_samples: int = 6
    batch_size: int = 32
    max_seq_len: int | None = None
    """None: the run's ``data.max_seq_len`` (128 without a run config)."""
    seed: int | None = None
    """Seed of the held-out masking and negatives (None: the run's)."""


@dataclass
class Context:
    """What every job needs: the model and its companions, the device, the resolved settings."""

    config: EvalConfig
    restored: Any
    device: torch.device
    max_seq_len: int
    visual: Any = None
    zero_shot_rows: tuple | None = None
    """Rank 0, after zero-shot: (records, problems, label problems, label vocabulary) for the report."""


def evaluate(config: EvalConfig) -> dict[str, Any] | None:
    """Run every job whose inputs are given; rank 0 writes the report and returns the results."""
    from trainer.restore import restore

    started = time.perf_counter()
    device, joined = _init_distributed()
    try:
        return _evaluate(config, restore(config.model, device), device, started)
    finally:
        if joined:
            import torch.distributed as dist

            dist.destroy_process_group()


def _evaluate(config: EvalConfig, restored: Any, device: torch.device, started: float) -> dict[str, Any] | None:
    cfg = restored.cfg
    ctx = Context(config=config, restored=restored, device=device,
                  max_seq_len=config.max_seq_len or (cfg.data.max_seq_len if cfg else 128))
    ctx.visual = _visual_tokenizer(ctx)
    results: dict[str, Any] = {"model": {"source": str(restored.source), "step": restored.step,
                                         "processes": collect.world()[1]}, "timing": {}}
    jobs = [("zero_shot", zero_shot_job), ("heldout", heldout_job)]
    for name, job in jobs:
        began = time.perf_counter()
        if job(ctx, results):
            results["timing"][name] = time.perf_counter() - began
    if collect.world()[0] != 0:
        return None
    began = time.perf_counter()
    pictures = generation_job(ctx, results, _out_dir(ctx))
    results["timing"]["generation"] = time.perf_counter() - began
    results["seconds"] = time.perf_counter() - started
    return _write(ctx, results, pictures)


def _init_distributed() -> tuple[torch.device, bool]:
    """Join the launcher's process group when there is one (and no group exists yet: e.g. the demo's
    own). Returns this rank's device and whether a group was joined here."""
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    joined = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    if joined:
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return (torch.device("cuda", local_rank) if cuda else torch.device("cpu")), joined


def _visual_tokenizer(ctx: Context):
    """The codebook's visual tokenizer, when a codebook is known (needed for clip shards and pictures)."""
    from models.visual.tokenizer import VisualTokenizer

    cfg, config = ctx.restored.cfg, ctx.config
    path = config.codebook or (cfg.data.codebook if cfg else None)
    if not path:
        return None
    weights = config.encoder_weights or (cfg.data.encoder_weights if cfg else "")
    visual = VisualTokenizer.from_codebook(path, **({"weights": weights} if weights else {})).to(ctx.device).eval()
    known = ctx.restored.codebook_hash
    if known and visual.codebook_hash != known:
        raise EvalError(f"codebook {path} is {visual.codebook_hash}, but the model was trained with codebook "
                        f"{known}: name the run's codebook with --codebook")
    return visual


class EvalError(ValueError):
    """Inputs that do not fit together; the message names them and the fix."""


# ---------------------------------------------------------------------------------------------
# jobs


def _resolve(spec: Sequence[str], what: str, ctx: Context) -> list[str]:
    """Shard URLs of a spec; token shards must come from the model's codebook."""
    from shards import reader, schema

    urls = reader.resolve_shards(list(spec))
    if not urls:
        raise EvalError(f"{what}: {list(spec)} names no complete shard")
    first = next(iter(reader.iter_samples(urls[:1], decode_arrays=False)), None)
    known = ctx.restored.codebook_hash
    if first is not None and first.meta.kind == schema.TOKEN_KIND and known and first.meta.codebook_hash != known:
        raise EvalError(f"{what}: tokens of codebook {first.meta.codebook_hash}, but the model knows the visual words "
                        f"of codebook {known}: tokenize the shards with the run's codebook")
    if first is not None and first.meta.kind == schema.CLIP_KIND and ctx.visual is None:
        raise EvalError(f"{what}: clip shards need the codebook to tokenize them: name it with --codebook")
    return urls


def zero_shot_job(ctx: Context, results: dict[str, Any]) -> bool:
    from trainer.labels import read_labels, read_vocabulary
    from trainer.zeroshot import ZeroShotClassifier, build_prompt, evaluate_zeroshot

    config = ctx.config
    if not config.zero_shot:
        return False
    if not (config.labels and config.vocabulary):
        raise EvalError("--zero-shot needs --labels (per-segment verb and noun) and --vocabulary (the classes)")
    vocabulary = read_vocabulary(config.vocabulary)
    labels = read_labels(config.labels, vocabulary)
    urls = _resolve(config.zero_shot, "--zero-shot", ctx)
    r = ctx.restored
    classifier = ZeroShotClassifier(r.model, r.tokenizer, r.vocab, vocabulary, template=config.template,
                                    max_seq_len=ctx.max_seq_len, device=ctx.device)
    unreadable: list[dict[str, Any]] = []
    shards = _eval_segments(urls, ctx.visual, lambda url, e: unreadable.append({"input": url, "reason": str(e)}))
    outcome = evaluate_zeroshot(classifier, shards, labels, batch_size=config.batch_size)
    unreadable = collect.gather_lists(unreadable)
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
    from shards import reader
    from trainer.heldout import sample_tokens
    from trainer.zeroshot import EvalSegment

    rank, world_size = collect.world()
    for shard in collect.my_shards(urls, rank, world_size):
        yield [EvalSegment(key=s.key, video=s.meta.video_id, start=s.meta.start, end=s.meta.end,
                           tokens=sample_tokens(s, visual)) for s in reader.iter_samples([urls[shard]], on_error=on_error)]


def heldout_job(ctx: Context, results: dict[str, Any]) -> bool:
    from trainer.config import ObjectivesConfig
    from trainer.heldout import evaluate_model

    cfg, config = ctx.restored.cfg, ctx.config
    spec = config.heldout if config.heldout is not None else tuple(cfg.data.heldout if cfg else ())
    if not spec:
        return False
    urls = _resolve(spec, "--heldout", ctx)
    seed = config.seed if config.seed is not None else (cfg.seed if cfg else 0)
    results["heldout"] = evaluate_model(
        ctx.restored.model, ctx.restored.tokenizer, urls, objectives=cfg.objectives if cfg else ObjectivesConfig(),
        max_seq_len=ctx.max_seq_len, batch_size=config.batch_size, seed=seed, visual=ctx.visual,
    )
    results["heldout_source"] = " ".join(spec)
    return True


def generation_job(ctx: Context, results: dict[str, Any], out: Path) -> dict[str, bool]:
    """Text-to-video and video-to-text with their pictures (rank 0 only)."""
    from shards import reader
    from trainer import generate

    config, r = ctx.config, ctx.restored
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
    from trainer.labels import read_vocabulary

    if not ctx.config.vocabulary:
        return []
    v = read_vocabulary(ctx.config.vocabulary)
    return [ctx.config.template.format(verb=verb, noun=v.nouns[i % len(v.nouns)]) for i, verb in enumerate(v.verbs)]


# ---------------------------------------------------------------------------------------------
# output


def _out_dir(ctx: Context) -> Path:
    r = ctx.restored
    out = Path(ctx.config.out) if ctx.config.out else (r.run_dir or r.source)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write(ctx: Context, results: dict[str, Any], pictures: dict[str, bool]) -> dict[str, Any]:
    from trainer import report

    out = _out_dir(ctx)
    if ctx.zero_shot_rows is not None:
        records, problems, label_problems, vocabulary = ctx.zero_shot_rows
        report.write_jsonl(out / "zeroshot.jsonl", records)
        report.write_jsonl(out / "zeroshot_problems.jsonl", problems + label_problems)
        pictures["confusion"] = report.plot_confusion(records, vocabulary.verbs, vocabulary.nouns, out / "zeroshot_confusion.png")
    if ctx.restored.run_dir is not None:
        pictures["curves"] = report.plot_curves(report.read_curves(ctx.restored.run_dir), out / "curves.png")
    report.write_report(out, results, pictures)
    return results


def format_tables(results: dict[str, Any]) -> str:
    """The zero-shot and held-out tables as plain text (what ``eval`` and ``demo`` print)."""
    from trainer.heldout import format_table as heldout_table
    from trainer.zeroshot import format_table as zeroshot_table

    parts = [zeroshot_table(results["zero_shot"])] if "zero_shot" in results else []
    parts += [heldout_table(results["heldout"])] if "heldout" in results else []
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="run folder, step-N checkpoint folder, or exported transformers directory")
    parser.add_argument("--out", help="report folder (default: the run folder, or the exported directory)")
    parser.add_argument("--zero-shot", nargs="+", default=(), metavar="SHARDS", help="shards of labelled segments")
    parser.add_argument("--labels", help="labels JSON lines or YouCook2-form annotations with verb/noun (or sentences)")
    parser.add_argument("--vocabulary", help='label vocabulary JSON {"verbs": [...], "nouns": [...]}')
    parser.add_argument("--heldout", nargs="*", metavar="SHARDS", help="held-out shards (default: the run's; none: skip)")
    parser.add_argument("--clips", nargs="+", default=(), metavar="SHARDS", help="clip shards for the pictures")
    parser.add_argument("--codebook", help="codebook file (default: the run's)")
    parser.add_argument("--encoder-weights", help="clip encoder weights, when the codebook's encoder needs them")
    parser.add_argument("--template", default=PAPER_TEMPLATE, help="zero-shot sentence with {verb} and {noun}")
    parser.add_argument("--prompt", action="append", default=[], help="a text-to-video sentence (repeatable)")
    parser.add_argument("--video-length", type=int, default=EvalConfig.video_length, help="video tokens per sentence")
    parser.add_argument("--max-clips", type=int, default=EvalConfig.max_clips, help="clips read for the pictures")
    parser.add_argument("--batch-size", type=int, default=EvalConfig.batch_size)
    parser.add_argument("--max-seq-len", type=int, help="default: the run's data.max_seq_len")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(
        model=args.model, out=args.out, zero_shot=tuple(args.zero_shot), labels=args.labels, vocabulary=args.vocabulary,
        heldout=None if args.heldout is None else tuple(args.heldout), clips=tuple(args.clips), codebook=args.codebook,
        encoder_weights=args.encoder_weights, template=args.template, prompts=tuple(args.prompt),
        video_length=args.video_length, max_clips=args.max_clips, batch_size=args.batch_size,
        max_seq_len=args.max_seq_len,
    )


def run(args: argparse.Namespace) -> int:
    from models.visual.codebook import CodebookError
    from shards.reader import ShardSpecError
    from trainer.config import ConfigError
    from trainer.labels import LabelError
    from trainer.restore import RestoreError
    from trainer.zeroshot import ZeroShotError

    try:
        results = evaluate(config_from_args(args))
    except (EvalError, LabelError, RestoreError, ZeroShotError, ConfigError, CodebookError, ShardSpecError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if results is not None:
        print(format_tables(results))
        print(f"\nreport: {results['report']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="videobert eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
