"""Benchmark: does pretraining learn, and how far do its figures move with the seed?

    python tests/benchmarks/bench_learning.py [--seeds 0,1,2] [--steps N] [--heldout-every-steps 50]
                                              [--out runs/bench-learning]

Runs ``videobert demo`` (the synthetic corpus, the demo recipe, DeepSpeed on this machine) once per
seed, each into ``OUT/seed-S`` (an existing folder resumes), then prints every headline figure of
each run and their mean and spread (sample standard deviation, min, max) over the seeds, with the
ceiling a caption-word oracle reaches on the same held-out captions and videos (``word_oracle_auc``), and draws
the held-out alignment ROC-AUC against training steps for every seed (``OUT/auc_by_step.png``) from
the held-out passes training ran every ``--heldout-every-steps``. ``--steps`` beyond the demo's
shows how many steps a figure needs. Everything lands in ``OUT/learning.md`` and ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))

from bench_common import Table  # noqa: E402

HEADLINES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("held-out alignment ROC-AUC", ("heldout", "alignment_auc"), "0.5"),
    ("held-out alignment balanced accuracy", ("heldout", "alignment_balanced_acc"), "0.5"),
    ("held-out masked text accuracy", ("heldout", "text_mlm_acc"), ""),
    ("held-out masked video accuracy", ("heldout", "video_mlm_acc"), ""),
    ("retrieval text->video R@1, alignment head", ("retrieval", "text_to_video", "r1"), "r1_chance"),
    ("retrieval video->text R@1, alignment head", ("retrieval", "video_to_text", "r1"), "r1_chance"),
    ("zero-shot verb top-1", ("zero_shot", "cross_modal_verb_top1"), "language_prior_verb_top1"),
    ("zero-shot noun top-1", ("zero_shot", "cross_modal_noun_top1"), "language_prior_noun_top1"),
    ("video in turn: model where the neighbour differs", ("heldout_video_in_turn", "neighbour_differs_accuracy"),
     "neighbour_differs_train_unigram_accuracy"),
    ("captioning CIDEr, no video", ("captioning", "rows", "no_video", "cider"), ""),
    ("captioning CIDEr, encoder", ("captioning", "rows", "encoder", "cider"), ""),
    ("captioning CIDEr, VideoBERT", ("captioning", "rows", "videobert", "cider"), ""),
    ("captioning CIDEr, VideoBERT + encoder", ("captioning", "rows", "videobert_encoder", "cider"), ""),
)
"""(label, path into results.json, the baseline beside it: a constant, a key of the same dict, or none)."""


def lookup(results: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def baseline(results: dict[str, Any], path: tuple[str, ...], spec: str) -> float | None:
    if not spec:
        return None
    try:
        return float(spec)
    except ValueError:
        value = lookup(results, (*path[:-1], spec))
        return None if value is None else float(value)


def order_table(runs: dict[int, dict[str, Any]], seeds: list[int], report: Path, summary: dict[str, Any]) -> None:
    """Table 3's order per seed: each pair's paired CIDEr difference, its interval and verdict."""
    pairs = [(o["better"], o["than"]) for o in lookup(runs[seeds[0]], ("captioning", "order")) or []]
    if not pairs:
        return
    captioners = lookup(runs[seeds[0]], ("captioning", "captioners")) or 1
    table = Table(f"captioning: Table 3's order (paired CIDEr difference [95 % interval over the segments and each "
                  f"row's {captioners} captioner{'s' if captioners > 1 else ''}], verdict)",
                  ["pair", *(f"seed {s}" for s in seeds)], report)
    by_seed = {s: {(o["better"], o["than"]): o for o in lookup(runs[s], ("captioning", "order")) or []} for s in seeds}
    summary["captioning_order"] = {}
    for pair in pairs:
        found = [by_seed[s].get(pair) for s in seeds]
        summary["captioning_order"][" > ".join(pair)] = found
        table.row(" > ".join(pair), *(f"{o['difference']:+.3f} [{o['difference_ci'][0]:+.3f}, {o['difference_ci'][1]:+.3f}] "
                                      f"{o['verdict']}" if o else "-" for o in found))


def word_oracle_auc(run: Path) -> float | None:
    """The held-out alignment ROC-AUC of a reader that knows which verbs and nouns each held-out video
    shows (the corpus's labels of the segments its clips overlap) and scores a caption with a video by
    the words of the caption that match them (+1 each) or do not (-1 each), over every pair of a
    caption with its own video and with another video's: the ceiling the caption words allow, since a
    caption that names neither (filler) cannot be told from any video."""
    from videobert.shards import reader
    from videobert.trainer.evaluation.heldout import roc_auc
    from videobert.trainer.evaluation.labels import read_vocabulary

    corpus, shards = run / "corpus", sorted((run / "tokens" / "heldout").glob("*.tar"))
    if not (corpus / "labels.jsonl").exists() or not shards:
        return None
    vocabulary = read_vocabulary(corpus / "vocabulary.json")
    segments: dict[str, list[dict[str, Any]]] = {}
    for line in (corpus / "labels.jsonl").read_text().splitlines():
        row = json.loads(line)
        segments.setdefault(row["video"], []).append(row)
    named, shown = [], []
    for sample in reader.iter_samples([str(s) for s in shards]):
        words = set(sample.text.lower().split())
        named.append(words & set(vocabulary.verbs + vocabulary.nouns))
        overlap = [r for r in segments.get(sample.meta.video_id, []) if r["start"] < sample.meta.end and r["end"] > sample.meta.start]
        shown.append({r["verb"] for r in overlap} | {r["noun"] for r in overlap})
    score = np.array([[sum(1 if w in video else -1 for w in text) for video in shown] for text in named], np.float64)
    return roc_auc(score.ravel(), np.eye(len(score), dtype=bool).ravel())  # own video: the diagonal


def run_demo(out: Path, seed: int, steps: int | None, every: int | None) -> float:
    cmd = [sys.executable, "-m", "videobert.trainer.cli", "demo", "--out", str(out), "--seed", str(seed)]
    cmd += ["--steps", str(steps)] if steps else []
    cmd += ["--heldout-every-steps", str(every)] if every is not None else []
    started = time.perf_counter()
    with open(out.parent / f"seed-{seed}.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return time.perf_counter() - started


def auc_curve(run: Path) -> list[tuple[int, float]]:
    """(step, held-out ROC-AUC) from the run's metrics.jsonl, the end's heldout.json last."""
    points: dict[int, float] = {}
    metrics = run / "train" / "metrics.jsonl"
    for line in metrics.read_text().splitlines() if metrics.exists() else ():
        row = json.loads(line)
        if row.get("split") == "heldout" and "alignment_auc" in row:
            points[int(row["step"])] = float(row["alignment_auc"])
    return sorted(points.items())


def plot(curves: dict[int, list[tuple[int, float]]], final: dict[int, tuple[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for seed, points in curves.items():
        points = sorted(dict(points + ([final[seed]] if seed in final else [])).items())
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"seed {seed}")
    ax.axhline(0.5, color="grey", linestyle=":", label="chance")
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out alignment ROC-AUC")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the demo recipe's)")
    parser.add_argument("--heldout-every-steps", type=int, default=None,
                        help="held-out pass every N steps for the curve (default: the demo recipe's)")
    parser.add_argument("--out", default="runs/bench-learning")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    report = out / "learning.md"
    report.write_text(f"# Learning over seeds {seeds}\n")

    runs: dict[int, dict[str, Any]] = {}
    seconds: dict[int, float] = {}
    for seed in seeds:
        seconds[seed] = run_demo(out / f"seed-{seed}", seed, args.steps, args.heldout_every_steps)
        runs[seed] = json.loads((out / f"seed-{seed}" / "train" / "results.json").read_text())

    per_seed = Table("headline figures per seed", ["figure", *(f"seed {s}" for s in seeds), "mean", "sd", "min", "max",
                                                    "baseline (mean)"], report)
    summary: dict[str, Any] = {"seeds": seeds, "seconds": seconds, "figures": {}}
    for label, path, spec in HEADLINES:
        values = [lookup(runs[s], path) for s in seeds]
        if any(v is None for v in values):
            continue
        values = [float(v) for v in values]
        bases = [baseline(runs[s], path, spec) for s in seeds]
        base = statistics.fmean(bases) if all(b is not None for b in bases) and bases else float("nan")
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        per_seed.row(label, *values, statistics.fmean(values), sd, min(values), max(values), base)
        summary["figures"][label] = {"values": values, "mean": statistics.fmean(values), "sd": sd, "baseline": bases}
    oracle = [word_oracle_auc(out / f"seed-{s}") for s in seeds]
    if all(v is not None for v in oracle):
        per_seed.row("held-out alignment ROC-AUC of the caption-word oracle (ceiling)", *oracle, statistics.fmean(oracle),
                     statistics.stdev(oracle) if len(oracle) > 1 else float("nan"), min(oracle), max(oracle), 0.5)
        summary["figures"]["word oracle alignment ROC-AUC"] = {"values": oracle, "mean": statistics.fmean(oracle)}
    per_seed.note("demo wall time per seed: " + ", ".join(f"seed {s}: {t:.0f} s" for s, t in seconds.items()))
    order_table(runs, seeds, report, summary)

    curves = {s: auc_curve(out / f"seed-{s}") for s in seeds}
    final = {s: (int(runs[s]["model"]["step"]), float(runs[s]["heldout"]["alignment_auc"]))
             for s in seeds if runs[s].get("model", {}).get("step") is not None
             and "alignment_auc" in runs[s].get("heldout", {})}
    summary["auc_by_step"] = {s: curves[s] for s in seeds}
    if any(curves.values()):
        curve = Table("held-out alignment ROC-AUC by training step", ["step", *(f"seed {s}" for s in seeds)], report)
        steps = sorted({p for s in seeds for p, _ in curves[s]})
        for step in steps:
            curve.row(step, *(dict(curves[s]).get(step, float("nan")) for s in seeds))
        plot(curves, final, out / "auc_by_step.png")
        curve.note(f"picture: {out / 'auc_by_step.png'}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nwritten: {report}, {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
