"""One training step (forward + backward, fp32, CPU) of VideoBERT vs transformers' BertForPreTraining.

Both models have the same shape (the ``demo`` preset: 6 layers, 384 hidden, 12 heads, 1536
intermediate) and the same word table (30,522 text ids + [>] + 20,736 visual words, padded to a
multiple of 64), read the same batch of joint sequences (``[CLS] text [>] video [SEP]``) with 15 %
of positions masked, and train with the same dropout. Fairness:

- attention: transformers is built with ``attn_implementation="sdpa"``, the same
  ``torch.nn.functional.scaled_dot_product_attention`` our layers call;
- threads: one ``torch.set_num_threads`` for both, in one process;
- timing: the two models alternate repetition by repetition (a shared machine's load hits both),
  after warm-up steps; the medians are compared, in wall time and in CPU time of the process
  (the latter moves less when other work shares the cores).

What differs is the design: our MLM head runs only at the masked positions (transformers computes
the 51K-way logits at every position and then ignores 85 % of them), and our q/k/v projection is
one matmul. Goal: our step at most 0.8 of transformers'.

    python tests/benchmarks/bench_model_step.py [--batch 16] [--seq-len 128] [--reps 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import BertConfig, BertForPreTraining

from videobert.models.config import preset
from videobert.models.hf_interop import bert_config_for
from videobert.models.videobert import VideoBertForPreTraining
from videobert.models.vocab import IGNORE_INDEX, JointVocab

GOAL_RATIO = 0.8


def build_vocab(num_visual_tokens: int) -> JointVocab:
    """bert-base-uncased's text ids (the packaged MiniLM's tokenizer), then [>] and the visual words."""
    return JointVocab(text_vocab_size=30522, num_visual_tokens=num_visual_tokens,
                      cls_id=101, sep_id=102, mask_id=103, pad_id=0, unk_id=100)


def build_batch(vocab: JointVocab, batch: int, seq_len: int, mask_fraction: float, seed: int = 0) -> dict:
    """Joint sequences, half text and half video, with ``mask_fraction`` of the positions labelled."""
    g = torch.Generator().manual_seed(seed)
    n_text = (seq_len - 3) // 2
    n_video = seq_len - 3 - n_text
    text = torch.randint(1000, vocab.text_vocab_size, (batch, n_text), generator=g)
    video = torch.randint(0, vocab.num_visual_tokens, (batch, n_video), generator=g)
    rows = [vocab.joint_sequence(t.tolist(), v.tolist()) for t, v in zip(text, video)]
    input_ids = torch.tensor([ids for ids, _ in rows])
    token_type_ids = torch.tensor([types for _, types in rows])
    masked = torch.rand(batch, seq_len, generator=g) < mask_fraction
    labels = torch.where(masked, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    input_ids = torch.where(masked, torch.full_like(input_ids, vocab.mask_id), input_ids)
    return dict(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=torch.ones_like(input_ids),
                labels=labels, alignment=torch.randint(0, 2, (batch,), generator=g))


def step_ours(model: VideoBertForPreTraining, b: dict) -> None:
    model.zero_grad(set_to_none=True)
    out = model(b["input_ids"], b["token_type_ids"], b["attention_mask"], b["labels"], b["alignment"])
    out.loss.backward()


def step_transformers(model: BertForPreTraining, b: dict) -> None:
    model.zero_grad(set_to_none=True)
    out = model(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"], attention_mask=b["attention_mask"],
                labels=b["labels"], next_sentence_label=b["alignment"])
    out.loss.backward()


def timed(fn, *args) -> tuple[float, float]:
    """Wall seconds and CPU seconds (all threads of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def report(name: str, times: list[tuple[float, float]]) -> tuple[float, float]:
    """Print and return the median wall and CPU seconds of one model's steps."""
    wall, cpu = statistics.median(t for t, _ in times), statistics.median(c for _, c in times)
    every = ", ".join(f"{t * 1e3:.0f}" for t, _ in times)
    print(f"{name:13s} step: median {wall * 1e3:8.1f} ms wall, {cpu * 1e3:8.1f} ms CPU  (wall, each: {every})")
    return wall, cpu


def build_models(vocab: JointVocab) -> tuple[VideoBertForPreTraining, BertForPreTraining]:
    config = preset("demo", vocab)
    ours = VideoBertForPreTraining(config).train()
    hf_config = BertConfig(**{**bert_config_for(config).to_dict(), "attn_implementation": "sdpa"})
    theirs = BertForPreTraining(hf_config).train()
    return ours, theirs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--mask-fraction", type=float, default=0.15)
    parser.add_argument("--visual-words", type=int, default=20736)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocab = build_vocab(args.visual_words)
    ours, theirs = build_models(vocab)
    batch = build_batch(vocab, args.batch, args.seq_len, args.mask_fraction)
    print(f"demo preset, word table {vocab.size_padded} rows, batch {args.batch} x {args.seq_len}, "
          f"{int((batch['labels'] != IGNORE_INDEX).sum())} masked positions, {args.threads} threads, "
          f"attention: SDPA in both (transformers attn_implementation={theirs.config._attn_implementation!r})")
    for _ in range(args.warmup):
        step_ours(ours, batch)
        step_transformers(theirs, batch)
    times = {"videobert": [], "transformers": []}
    for _ in range(args.reps):
        times["videobert"].append(timed(step_ours, ours, batch))
        times["transformers"].append(timed(step_transformers, theirs, batch))
    medians = {name: report(name, t) for name, t in times.items()}
    ratio = medians["videobert"][0] / medians["transformers"][0]
    cpu_ratio = medians["videobert"][1] / medians["transformers"][1]
    verdict = "met" if ratio <= GOAL_RATIO else "NOT met"
    print(f"ratio videobert / transformers: {ratio:.3f} wall, {cpu_ratio:.3f} CPU  (goal <= {GOAL_RATIO}: {verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
