"""Benchmark: training throughput and MFU of the ``base`` and ``large`` presets under ZeRO-3 on one GPU.

The step is the trainer's: the model built partitioned under ``deepspeed.zero.Init`` from a preset
(no pretrained weights: nothing to download), the project's ``ds_config.json`` filled by
``trainer.engine.build_ds_config`` (ZeRO stage 3, bf16 on GPUs that have it), the trainer's AdamW
and schedule (``build_engine``); the batch is synthetic joint sequences ``[CLS] text [>] video
[SEP]`` over the full joint vocabulary (30,522 WordPieces + [>] + 20,736 visual words) with 15 %
of positions masked and alignment labels on every row.

Variants (each measured in the same run, so the ratios compare like with like):

- ``reference``: PyTorch kernels, attention padded to (B, T) with a key mask;
- ``triton``: the fused Triton kernels, attention padded;
- ``triton+varlen``: the fused kernels and attention on unpadded variable-length sequences.

Rows are full length (``--lengths full``: every row ``seq`` tokens, the figures comparable with
published BERT numbers, where unpadded attention has nothing to remove) or mixed (``--lengths
mixed``: each row a length drawn uniformly from [seq/4, seq], as VideoBERT's mix of text-only,
video-only and joint examples makes them). Packing several examples into one row is not offered:
it is not built (see the README's throughput section).

MFU = model FLOPs per second / the device's peak (``trainer.metrics.peak_flops``), with model FLOPs
from the project's sizing (``models.sizing.flops_per_token``: 6 x parameters per token plus the
attention term, the MLM head at masked positions only), summed per row at its own length. Beside
it, the rate a bare bf16 matmul reaches on the same device, so that the gap to the device is
measured, not guessed. Goal (H100/H200): ``large`` at 512 at least 50 % MFU.

    python tests/benchmarks/bench_throughput.py --presets large --seq-lens 512          # first figure
    python tests/benchmarks/bench_throughput.py --out results.md                        # everything
    python tests/benchmarks/bench_throughput.py --smoke                                 # CPU, tiny
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import torch
from bench_common import Table, environment_line, synchronize

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = {"reference": ("reference", "padded"), "triton": ("triton", "padded"), "triton+varlen": ("triton", "varlen")}
MASKED_FRACTION = 0.15


def bert_vocab(num_visual_tokens: int = 20736, text_vocab_size: int = 30522):
    """bert-base-uncased's ids ([CLS] 101, [SEP] 102, [MASK] 103), then [>] and the visual words."""
    from videobert.models.vocab import JointVocab

    return JointVocab(text_vocab_size=text_vocab_size, num_visual_tokens=num_visual_tokens,
                      cls_id=101, sep_id=102, mask_id=103, pad_id=0, unk_id=100)


def row_lengths(batch: int, seq_len: int, mode: str, gen: torch.Generator) -> list[int]:
    if mode == "full":
        return [seq_len] * batch
    return torch.randint(max(8, seq_len // 4), seq_len + 1, (batch,), generator=gen).tolist()


def make_batch(vocab, lengths: list[int], seq_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Joint rows (half text, half video), padded to ``seq_len``, 15 % of real positions masked."""
    from videobert.models.vocab import IGNORE_INDEX

    gen = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), seq_len), vocab.pad_id)
    types, mask = torch.zeros_like(ids), torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        n_text = (length - 3) // 2
        text = torch.randint(min(1000, vocab.text_vocab_size // 2), vocab.text_vocab_size, (n_text,), generator=gen)
        video = torch.randint(0, vocab.num_visual_tokens, (length - 3 - n_text,), generator=gen)
        row_ids, row_types = vocab.joint_sequence(text.tolist(), video.tolist())
        ids[row, :length], types[row, :length], mask[row, :length] = torch.tensor(row_ids), torch.tensor(row_types), 1
    chosen = (torch.rand(ids.shape, generator=gen) < MASKED_FRACTION) & mask.bool()
    chosen[:, 0] = False
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    inputs = torch.where(chosen, torch.full_like(ids, vocab.mask_id), ids)
    alignment = torch.randint(0, 2, (len(lengths),), generator=gen)
    return dict(input_ids=inputs, token_type_ids=types, attention_mask=mask, mlm_labels=labels,
                alignment_labels=alignment)


def step_flops(config, batch: dict[str, torch.Tensor]) -> float:
    """Model FLOPs of one training step: each row at its own length (``models.sizing``)."""
    from videobert.models.sizing import step_flops as flops

    return flops(config, batch["attention_mask"], batch["mlm_labels"])


def train_config(batch: int, precision: str):
    from videobert.trainer.config import OptimConfig, TrainConfig

    return TrainConfig(deepspeed_config=str(ROOT / "ds_config.json"),
                       optim=OptimConfig(micro_batch_size=batch, precision=precision, warmup_steps=0))


def build_engine_for(config, variant: str, cfg, device):
    """The trainer's ZeRO-3 engine around a freshly built (partitioned) model on ``variant``'s kernels."""
    from videobert.models.videobert import VideoBertForPreTraining
    from videobert.trainer.engine import build_ds_config, build_engine, zero_init_context

    ds = build_ds_config(cfg, 1, config.hidden_size)
    with zero_init_context(ds, enabled=True):
        model = VideoBertForPreTraining(config)
    kernels, attention = VARIANTS[variant]
    model.set_kernels(kernels)
    model.set_attention(attention)
    return build_engine(model, cfg, ds)


def measure_variant(config, variant: str, batch: dict, cfg, device, warmup: int, steps: int) -> tuple[float, float]:
    """(seconds per step, peak GiB) of ``steps`` timed training steps after ``warmup``."""
    engine = build_engine_for(config, variant, cfg, device)
    inputs = {k: v.to(device) for k, v in batch.items()}

    def step():
        out = engine(**inputs)
        engine.backward(out.loss)
        engine.step()

    for _ in range(warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    seconds = (time.perf_counter() - started) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    _release(engine)
    return seconds, peak


def _release(engine) -> None:
    """Free one engine before the next is built (ZeRO-3 hooks and buffers otherwise linger)."""
    if hasattr(engine, "destroy"):
        engine.destroy()
    del engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def matmul_rate(device, n: int = 8192, reps: int = 20) -> float:
    """FLOP/s of a bare (n x n) @ (n x n) bf16 matmul: what this device reaches on the ideal kernel."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    synchronize(device)
    started = time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize(device)
    return 2.0 * n**3 * reps / (time.perf_counter() - started)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="large,base")
    parser.add_argument("--seq-lens", default="512,128")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    parser.add_argument("--lengths", default="full", choices=("full", "mixed"))
    parser.add_argument("--tokens-per-step", type=int, default=32768, help="batch = this / seq-len rows")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-matmul", action="store_true", help="skip the bare matmul rate")
    parser.add_argument("--out", help="markdown file the rows are appended to as they are measured")
    parser.add_argument("--smoke", action="store_true",
                        help="the tiny preset on the CPU in fp32 (Triton interpreter): checks the script only")
    args = parser.parse_args(argv)
    args.variants = ["reference"] + [v for v in args.variants.split(",") if v != "reference"]  # the baseline first
    if not set(args.variants) <= set(VARIANTS):
        parser.error(f"--variants: unknown {sorted(set(args.variants) - set(VARIANTS))}; choose from {list(VARIANTS)}")
    if args.smoke:
        args.presets, args.seq_lens, args.tokens_per_step, args.warmup, args.steps = "tiny", "32", 128, 1, 1
        args.lengths, args.no_matmul = "mixed", True
    args.presets = args.presets.split(",")
    args.seq_lens = [int(v) for v in str(args.seq_lens).split(",")]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are defined: before import
    if not torch.cuda.is_available() and not args.smoke:
        print("no CUDA device: run with --smoke to check the script on the CPU", file=sys.stderr)
        return 2
    from videobert.models.config import preset
    from videobert.trainer.distributed import init_distributed
    from videobert.trainer.engine import resolve_precision
    from videobert.trainer.metrics import peak_flops

    device = init_distributed().device
    precision = resolve_precision("auto")
    peak = peak_flops(device)
    vocab = bert_vocab(200, 1000) if args.smoke else bert_vocab()
    table = Table(f"Training throughput, ZeRO-3 on one device ({precision}, {args.lengths}-length rows)",
                  ["preset", "seq", "rows", "variant", "tokens/s", "MFU", "vs reference", "step s", "peak GiB"],
                  args.out, preface=f"{environment_line(device)}; peak {peak / 1e12:.0f} TFLOP/s (bf16 dense)")
    if not args.no_matmul and device.type == "cuda":
        rate = matmul_rate(device)
        table.note(f"bare bf16 matmul 8192^3: {rate / 1e12:.0f} TFLOP/s = {rate / peak:.1%} of peak" if peak
                   else f"bare bf16 matmul 8192^3: {rate / 1e12:.0f} TFLOP/s")
    for name in args.presets:
        config = preset(name, vocab, max_position_embeddings=max(512, max(args.seq_lens)))
        for seq_len in args.seq_lens:
            rows = max(1, args.tokens_per_step // seq_len)
            gen = torch.Generator().manual_seed(seq_len)
            batch = make_batch(vocab, row_lengths(rows, seq_len, args.lengths, gen), seq_len)
            tokens, flops = int(batch["attention_mask"].sum()), step_flops(config, batch)
            cfg = train_config(rows, precision)
            base = None
            for variant in args.variants:
                seconds, memory = measure_variant(config, variant, batch, cfg, device, args.warmup, args.steps)
                base = base or (seconds if variant == "reference" else None)
                mfu = flops / seconds / peak if peak else float("nan")
                table.row(name, seq_len, rows, variant, tokens / seconds, f"{mfu:.1%}" if peak else "-",
                          f"{base / seconds:.2f}x" if base else "-", seconds, memory)
    table.note("MFU goal: large at 512 >= 50 % on H100/H200. 'vs reference': speed-up over the reference step.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
