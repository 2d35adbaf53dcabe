"""Benchmark: each fused op, ``triton`` against ``reference`` and against ``torch.compile`` of it.

For every op and shape: the median time of one forward + backward, and the peak memory that call
allocates above its inputs (the gradients included, which every implementation must produce). The
ratios are against the reference measured in the same run, on the same inputs.

Shapes are BERT-base and BERT-large at 16K and 64K tokens (H = 768 / 1024, the feed-forward width
4H); the loss over the joint vocabulary (30,522 WordPieces + [>] + 20,736 visual words, padded to
51,264 rows) takes the masked share of those tokens (15 %). Goals (issue 11):

- linear_cross_entropy: peak memory at most 0.25x the reference at V = 51K;
- bias_gelu and residual_layer_norm: faster than the reference and not slower than torch.compile.

    python tests/benchmarks/bench_kernels.py                          # on a GPU, bf16
    python tests/benchmarks/bench_kernels.py --impls triton,reference --out results.md
    python tests/benchmarks/bench_kernels.py --smoke                  # CPU, Triton interpreter, tiny
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Callable

import torch
from bench_common import Table, environment_line, median_seconds, peak_bytes

MASKED_FRACTION = 0.15
VOCAB_ROWS = 51264
"""The joint table of a bert-base vocabulary with the paper's 20,736 visual words (multiple of 64)."""
OPS = ("linear_cross_entropy", "bias_gelu", "residual_layer_norm")
IMPLS = ("reference", "triton", "compile")


@dataclass(frozen=True)
class Case:
    """One op at one shape: how to make its inputs and call it."""

    op: str
    shape: str
    make: Callable[[], tuple]
    """() -> inputs (leaves that require grad, plus constants)."""
    call: Callable[..., torch.Tensor]
    """(fn, *inputs) -> the output to differentiate."""


def _leaf(*shape, device, dtype, scale=1.0, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    return (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) * scale).to(dtype).requires_grad_()


def cases(hidden_sizes, token_counts, vocab: int, device, dtype) -> list[Case]:
    """Every (op, shape) to measure, smallest first within an op."""
    out = []
    for h in hidden_sizes:
        for n in token_counts:
            rows = max(1, int(n * MASKED_FRACTION))
            kw = dict(device=device, dtype=dtype)

            def ce_inputs(rows=rows, h=h):
                labels = torch.randint(0, vocab, (rows,), device=device)
                return (_leaf(rows, h, **kw, scale=0.5), _leaf(vocab, h, **kw, scale=0.02, seed=1),
                        _leaf(vocab, **kw, scale=0.0, seed=2), labels)

            out.append(Case("linear_cross_entropy", f"N={rows} H={h} V={vocab}", ce_inputs,
                            lambda fn, x, w, b, labels: fn(x, w, b, labels)))
            out.append(Case("bias_gelu", f"N={n} C={4 * h}",
                            lambda n=n, h=h: (_leaf(n, 4 * h, **kw), _leaf(4 * h, **kw, seed=1)),
                            lambda fn, x, b: fn(x, b)))
            out.append(Case("residual_layer_norm", f"N={n} H={h}",
                            lambda n=n, h=h: (_leaf(n, h, **kw), _leaf(n, h, **kw, seed=1),
                                              _leaf(h, **kw, seed=2), _leaf(h, **kw, seed=3)),
                            lambda fn, x, r, w, b: fn(x, r, w, b, 1e-12)))
    return out


def implementation(op: str, impl: str) -> Callable:
    from videobert.models.kernels import get_ops

    if impl == "compile":
        return torch.compile(getattr(get_ops("reference"), op))
    return getattr(get_ops(impl), op)


def step_fn(case: Case, fn: Callable, inputs: tuple) -> Callable[[], None]:
    """One forward + backward with a fixed output gradient (made once, so that its making is not
    timed); input gradients dropped after, so each call allocates them afresh."""
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    grad: list[torch.Tensor] = []

    def step():
        out = case.call(fn, *inputs)
        if not grad:
            grad.append(torch.ones_like(out) if out.dim() == 0 else torch.randn_like(out))
        out.backward(grad[0])
        for t in leaves:
            t.grad = None

    return step


def measure(case: Case, impls, device, warmup: int, reps: int, table: Table) -> None:
    """Rows for one case, the reference first so that the others have their ratio."""
    inputs = case.make()
    base_time = base_mem = None
    for impl in impls:
        step = step_fn(case, implementation(case.op, impl), inputs)
        try:
            seconds = median_seconds(step, device, warmup, reps)
            memory = peak_bytes(step, device)
        except Exception as e:  # noqa: BLE001 - a failing implementation is a result, not a crash
            table.row(case.op, case.shape, impl, f"failed: {type(e).__name__}: {str(e)[:80]}", "", "", "")
            continue
        if impl == "reference":
            base_time, base_mem = seconds, memory
        table.row(case.op, case.shape, impl, seconds * 1e3, _ratio(seconds, base_time), memory / 2**20,
                  _ratio(memory, base_mem))
    del inputs
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _ratio(value: float, base: float | None) -> str:
    return "-" if not base or value != value else f"{value / base:.2f}x"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, from {OPS}")
    parser.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated, from {IMPLS} (reference first)")
    parser.add_argument("--hidden", default="768,1024", help="hidden sizes (BERT-base, BERT-large)")
    parser.add_argument("--tokens", default="16384,65536", help="tokens per batch")
    parser.add_argument("--vocab", type=int, default=VOCAB_ROWS)
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--out", help="markdown file the rows are appended to as they are measured")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on the CPU in fp32 (Triton interpreter): checks the script, measures nothing useful")
    args = parser.parse_args(argv)
    args.ops, args.impls = args.ops.split(","), args.impls.split(",")
    for name, allowed, given in (("--ops", OPS, args.ops), ("--impls", IMPLS, args.impls)):
        if not set(given) <= set(allowed):
            parser.error(f"{name}: unknown {sorted(set(given) - set(allowed))}; choose from {allowed}")
    if args.smoke:
        args.hidden, args.tokens, args.vocab, args.dtype, args.warmup, args.reps = "40", "300", 700, "fp32", 1, 1
        args.impls = [i for i in args.impls if i != "compile"]  # compiling for the CPU here proves nothing
    args.hidden = [int(v) for v in str(args.hidden).split(",")]
    args.tokens = [int(v) for v in str(args.tokens).split(",")]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are defined: before import
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cpu" and not args.smoke:
        print("no CUDA device: run with --smoke to check the script on the CPU", file=sys.stderr)
        return 2
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    impls = ["reference"] + [i for i in args.impls if i != "reference"]
    table = Table(f"Fused kernels, forward + backward ({args.dtype})",
                  ["op", "shape", "impl", "ms", "time vs reference", "peak MiB", "memory vs reference"], args.out,
                  preface=environment_line(device))
    for case in cases(args.hidden, args.tokens, args.vocab, device, dtype):
        if case.op in args.ops:
            measure(case, impls, device, args.warmup, args.reps, table)
    table.note("Goals: linear_cross_entropy memory <= 0.25x reference; bias_gelu and residual_layer_norm "
               "time < 1x reference and <= torch.compile's.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
