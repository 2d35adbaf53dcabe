"""The evaluation report: ``report.md`` with its tables and pictures, beside the raw results.

Files written into the report folder:

    report.md                 the tables (zero-shot in the layout of the paper's Table 1, held-out
                              figures with their chance levels) and the pictures below
    results.json              every number of the report
    curves.png                training loss and accuracies by step, from the run's TensorBoard
                              events (or its metrics.jsonl, the same scalars)
    zeroshot_confusion.png    true vs top-1 predicted verb and noun (cross-modal)
    zeroshot.jsonl            one line per classified segment: true labels, top-5 predictions
    zeroshot_problems.jsonl   one line per sample read but not classified, with the reason
    text_to_video.png         sentences and the clips of their predicted visual words
    video_to_text.png         clips and the words predicted for them
    retrieval.png             captions and the videos they retrieve

The captioning section comes from ``videobert caption``'s results (``caption/results.json`` in the
run folder, written by ``write_caption_report``, which also writes ``caption/report.md`` alone).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from videobert.models.vocab import JointVocab
from videobert.shards.folders import read_json_lines
from videobert.trainer.evaluation.tables import (
    caption_table, captioners_of, encoder_explains_order, heldout_table, in_turn_table, markdown_table, order_lines,
    probe_table, retrieval_table, zeroshot_table,
)
from videobert.trainer.run_folder import REPORT_FILE, RESULTS_FILE, RunFolder, write_json, write_text_atomic

CURVES = {
    "loss": ("loss", "text_mlm_loss", "video_mlm_loss", "alignment_loss"),
    "accuracy": ("text_mlm_acc", "video_mlm_acc", "alignment_acc"),
    "held-out alignment": ("heldout/alignment_auc", "heldout/alignment_balanced_acc"),
}
"""Panels of curves.png: title -> scalars drawn in it (``heldout/...``: the held-out passes training ran,
``logging.heldout_every_steps`` and the end's)."""


def read_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Training scalars by name: (step, value), one value per step (the last logged: a resumed run
    logs some steps twice). From TensorBoard events; metrics.jsonl when there are none."""
    run = RunFolder(run_dir)
    curves = _tensorboard_curves(run.tensorboard) if run.tensorboard.is_dir() else {}
    if not curves and run.metrics.is_file():
        curves = _jsonl_curves(run.metrics)
    return {name: sorted(dict(points).items()) for name, points in curves.items()}


def _tensorboard_curves(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(folder.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            name = tag[len("train/") :] if tag.startswith("train/") else tag if tag.startswith("heldout/") else None
            if name is not None:
                curves.setdefault(name, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return curves


def _jsonl_curves(path: Path) -> dict[str, list[tuple[int, float]]]:
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in read_json_lines(path):
        split = row.get("split")
        if split in ("train", "heldout") and isinstance(row.get("step"), int):
            for name, value in row.items():
                if name not in ("step", "split") and isinstance(value, (int, float)):
                    key = name if split == "train" else f"heldout/{name}"
                    curves.setdefault(key, []).append((int(row["step"]), float(value)))
    return curves


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path) -> bool:
    """curves.png; False (nothing written) when the run logged none of the scalars."""
    panels = {title: [n for n in names if curves.get(n)] for title, names in CURVES.items()}
    panels = {title: names for title, names in panels.items() if names}
    if not panels:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (title, names) in zip(axes[0], panels.items()):
        for name in names:
            steps, values = zip(*curves[name])
            ax.plot(steps, values, label=name, marker="." if len(steps) < 30 else None)
        if title.startswith("held-out"):  # on the whole scale, beside chance: a move of 0.02 looks like one
            ax.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance")
            ax.set_ylim(0.3, 1.0)
        ax.set_title(title if title.startswith("held-out") else f"training {title}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_confusion(records: Sequence[dict[str, Any]], verbs: Sequence[str], nouns: Sequence[str], path: Path) -> bool:
    """zeroshot_confusion.png: counts of (true, top-1 predicted) for verbs and nouns."""
    if not records:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, slot, names in ((axes[0], "verb", verbs), (axes[1], "noun", nouns)):
        counts = np.zeros((len(names), len(names)), dtype=int)
        for r in records:
            counts[list(names).index(r[slot]), list(names).index(r[f"predicted_{slot}s"][0])] += 1
        ax.imshow(counts, cmap="Blues")
        ax.set_xticks(range(len(names)), names, rotation=60, fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel(f"predicted {slot} (top-1)")
        ax.set_ylabel(f"true {slot}")
        for (i, j), c in np.ndenumerate(counts):
            if c:
                ax.text(j, i, str(c), ha="center", va="center", fontsize=7, color="black" if c < counts.max() / 2 else "white")
    fig.suptitle("zero-shot classification, cross-modal")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


# ---------------------------------------------------------------------------------------------
# markdown


def zeroshot_markdown(z: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    lines = ["## Zero-shot action classification", "",
             f"Template: `[CLS] {summary['template_masked']} [>] video tokens [SEP]`; the verb is read at the "
             "first mask and the noun at the second, restricted to the label vocabulary "
             f"({summary['verbs']} verbs, {summary['nouns']} nouns). The language prior is the same model "
             "given the sentence alone; the best constant guess is the share of the most frequent true labels. "
             "In brackets: 95 % Wilson intervals over the segments (uniform chance is exact).", "",
             ]
    lines += markdown_table(zeroshot_table(z))
    prior = z.get("language_prior_top", {})
    lines += ["", f"{int(z['segments'])} labelled segments classified; {summary['read']} read, "
              f"{summary['unlabelled']} without a label and {summary['unreadable']} unreadable "
              "(both listed in `zeroshot_problems.jsonl`; per-segment predictions in `zeroshot.jsonl`).",
              f"The language prior ranks the verbs {', '.join(prior.get('verb', []))} and the nouns "
              f"{', '.join(prior.get('noun', []))}.", ""]
    if summary.get("confusion"):
        lines += ["![zero-shot confusion](zeroshot_confusion.png)", ""]
    return lines


def heldout_markdown(h: dict[str, float], source: str) -> list[str]:
    lines = ["## Held-out alignment and masked tokens", "",
             f"Shards: `{source}`. Chance: for accuracies the share of the most frequent target, for "
             "perplexities that of predicting the targets' own frequencies, for ROC-AUC and balanced accuracy "
             "0.5. Tokens are masked at random as in training: on a small set that leaves few video targets, whose own frequencies "
             "make a chance perplexity no real prediction reaches; the next table masks every held-out video "
             "token instead. Every segment is read twice: masked, with its own video (the masked-token rows), and "
             "intact, with its own video and with another video (the alignment rows). Balanced accuracy is the mean of the recall on aligned and on misaligned "
             "examples; the accuracy at training's prior weighs the same two recalls by training's share of "
             "negatives, so a head that only learned that share scores its chance there. "
             "In brackets: 95 % intervals, Wilson's for accuracies, a bootstrap over the alignment examples for "
             "balanced accuracy and ROC-AUC; perplexities have none (the pass keeps loss totals, not per-target "
             "losses).", "",
             ]
    return lines + markdown_table(heldout_table(h)) + [""]


def heldout_by_source_markdown(by_source: dict[str, dict[str, float]]) -> list[str]:
    """The held-out figures of each named held-out source (``data.heldout`` entries with a name)."""
    lines = ["### Held-out figures per source", "", "The same pass over each named held-out source on its own.", ""]
    for name, figures in by_source.items():
        lines += [f"**{name}**", ""] + markdown_table(heldout_table(figures, title=f"held-out: {name}")) + [""]
    return lines


def in_turn_markdown(r: dict[str, float]) -> list[str]:
    unigram = (f"{int(r['train_tokens'])} training tokens, add-one smoothed" if r.get("train_tokens")
               else "no training tokens found: uniform")
    lines = ["## Held-out video tokens, each masked once", "",
             f"Every visual token of the held-out segments is masked in turn ({int(r['targets'])} targets) and "
             "predicted from the segment's text and its other clips. The training unigram "
             f"({unigram}) is the best prediction that ignores the segment; the oracle unigram is fitted on "
             "these very targets. The rows marked \"there\" are over the "
             f"{int(r.get('neighbour_differs_targets', 0))} targets where copying the neighbouring clip's word is wrong "
             "(it differs, or there is no neighbour), so copying scores 0 there by construction. In brackets: 95 % "
             "Wilson intervals (targets counted as independent); perplexities have none.", ""]
    return lines + markdown_table(in_turn_table(r)) + [""]


def retrieval_markdown(r: dict[str, Any], picture: bool = False) -> list[str]:
    lines = ["## Text-video retrieval (zero-shot)", "",
             f"{r['segments']} held-out segments of `{r.get('source', '')}` ({r['distinct_captions']} distinct captions), "
             "every caption read with every video; ranked by the alignment head's probability of \"aligned\". A "
             "retrieval is correct when it finds the query's own segment or one with an identical caption. "
             "Chance (a random ranking) in round brackets; 95 % intervals in square brackets, a bootstrap over "
             "the query segments (the set ranked against held fixed).", "",
             "The masked-words ranking reads each video once after the zero-shot template and scores a caption by "
             "the log-probability of its own verb and noun at the masks.", ""]
    lines += markdown_table(retrieval_table(r))
    if picture:
        lines += ["", f"Text to video for a few captions, ranked by the {r.get('examples_ranking', 'alignment head')}, best first "
                  "(green: correct; p: the ranking's score as a probability):", "", "![retrieval](retrieval.png)"]
    return lines + [""]


def generation_markdown(t2v: list[dict[str, Any]], v2t: list[dict[str, Any]]) -> list[str]:
    lines = []
    if t2v:
        lines += ["## Text to video", "", "Each sentence's video tokens, predicted by filling masks one at a time "
                  "(most confident first); each visual word is shown by the clip nearest to its centroid "
                  "(d = feature distance).", "", "![text to video](text_to_video.png)", "",
                  "| sentence | visual words |", "|---|---|"]
        lines += [f"| {r['sentence']} | {' '.join(JointVocab.visual_word(v) for v in r['visual_words'])} |" for r in t2v]
        lines.append("")
    if v2t:
        lines += ["## Video to text", "", "The most likely words at the template's two masks, given each clip.", "",
                  "![video to text](video_to_text.png)", "", "| clip | caption | verb mask | noun mask |", "|---|---|---|---|"]
        lines += [f"| {r['key']} | {r['caption']} | {' '.join(r['verb_words'])} | {' '.join(r['noun_words'])} |" for r in v2t]
        lines.append("")
    return lines


def caption_markdown(c: dict[str, Any], pictures: str = "") -> list[str]:
    """The captioning table (the paper's Table 3 layout), the probes and the examples; ``pictures``:
    the folder of ``caption_examples.png`` relative to the report, or None when there is none."""

    rows = c["rows"]
    tokenizer = next(iter(rows.values()))["tokenizer"] if rows else ""
    k = captioners_of(c)
    trained = (f"{k} small transformer encoder-decoders per row (trained alike from different seeds; a row's scores "
               "are their mean)" if k > 1 else "A small transformer encoder-decoder per row")
    lines = ["## Captioning from frozen features", "",
             f"Features of the model at step {c['model'].get('step')}. "
             f"{trained}, trained on {c['train_segments']} labelled training segments for "
             f"{c['steps']} steps each, {c['decoding']} decoding, scored on {c['heldout_segments']} held-out segments "
             f"({c['distinct_references']} distinct reference sentences). VideoBERT features: the frozen model reads "
             f"`{c['template']}` before the video tokens; its outputs at the video tokens and at the masks are "
             f"averaged and concatenated. Tokens: {tokenizer}. BLEU, METEOR and ROUGE-L in %. In brackets: "
             f"95 % intervals, a bootstrap over the held-out segments{' and over the captioners' if k > 1 else ''} "
             "(BLEU recomputed from each resample's n-gram counts, ROUGE-L and CIDEr as means of per-segment scores "
             "with CIDEr's document frequencies kept from the whole set); METEOR has none, its corpus score not "
             "being made of per-segment parts.", ""]
    lines += markdown_table(caption_table(c))
    if c.get("order"):
        cover = (f"and each row's {k} captioners, so it covers another training of the captioners as well as another "
                 "draw of segments" if k > 1 else
                 "together; it covers the choice of held-out segments, not the captioners' own training: captioners "
                 "trained with another seed on the same features can differ by more")
        lines += ["", "Table 3's order: the difference of each pair of rows over the same held-out segments, with a "
                  f"95 % interval from a bootstrap that resamples the segments of both rows together (paired) {cover}. "
                  "An interval that holds 0 means these segments and captioners cannot tell the two rows apart.", ""]
        lines += [f"- {line}" for line in order_lines(c)]
        explained = encoder_explains_order(c)
        if explained:
            lines += ["", explained]
    if c.get("skipped_rows"):
        lines += ["", f"Rows without their features (no encoder features in the shards): {', '.join(c['skipped_rows'])}."]
    lines.append("")
    lines += _probe_markdown(c.get("probes", {}))
    if pictures is not None:
        lines += ["Captioned held-out segments (first clip's frames):", "",
                  f"![captioned examples]({pictures}{'/' if pictures else ''}caption_examples.png)", ""]
    elif c.get("examples"):
        lines += ["| reference | " + " | ".join(c["row_labels"][r] for r in rows) + " |", "|---|" + "---|" * len(rows)]
        lines += ["| " + " | ".join([e["reference"], *(e.get(r, "") for r in rows)]) + " |" for e in c["examples"]]
        lines.append("")
    return lines


def _probe_markdown(probes: dict[str, Any]) -> list[str]:
    accuracy = probes.get("accuracy")
    if not accuracy:
        return []
    lines = ["### Linear probes", "",
             f"Logistic regression on standardised frozen features, fitted on {probes['train_segments']} labelled "
             f"training segments, held-out accuracy on {probes['heldout_segments']}, with 95 % Wilson intervals in brackets.", ""]
    return lines + markdown_table(probe_table(accuracy, probes.get("heldout_segments"))) + [""]


def write_caption_report(folder: Any, results: dict[str, Any], pictures: dict[str, bool]) -> Path:
    """``videobert caption``'s report.md and results.json in its ``CaptionFolder``."""
    lines = ["# VideoBERT captioning", "", f"Model: `{results['model']['source']}`"
             + (f" (step {results['model']['step']})" if results["model"].get("step") is not None else "") + ".", ""]
    lines += caption_markdown(results, "" if pictures.get("examples") else None)
    write_text_atomic(folder.report, "\n".join(lines))
    results["report"] = str(folder.report)
    results["pictures"] = pictures
    write_json(folder.results, results)
    return folder.report


def write_report(out: Path, results: dict[str, Any], pictures: dict[str, bool]) -> Path:
    """report.md and results.json into ``out`` (``results["report"]`` names the report); ``pictures``:
    which PNGs were written."""
    info = results["model"]
    lines = ["# VideoBERT evaluation", "",
             f"Model: `{info['source']}`" + (f" (step {info['step']})" if info.get("step") is not None else "") +
             f"; evaluated by {info['processes']} process(es) in {results['seconds']:.1f} s.", ""]
    if "zero_shot" in results:
        lines += zeroshot_markdown(results["zero_shot"], {**results["zero_shot_summary"], "confusion": pictures.get("confusion")})
    if "heldout" in results:
        lines += heldout_markdown(results["heldout"], results["heldout_source"])
    if results.get("heldout_by_source"):
        lines += heldout_by_source_markdown(results["heldout_by_source"])
    if "heldout_video_in_turn" in results:
        lines += in_turn_markdown(results["heldout_video_in_turn"])
    if "retrieval" in results:
        lines += retrieval_markdown(results["retrieval"], bool(pictures.get("retrieval")))
    if "captioning" in results:
        lines += caption_markdown(results["captioning"], results["captioning"].get("pictures_folder"))
    if pictures.get("curves"):
        lines += ["## Training curves", "", "![training curves](curves.png)", ""]
    lines += generation_markdown(results.get("text_to_video", []), results.get("video_to_text", []))
    path = out / REPORT_FILE
    write_text_atomic(path, "\n".join(lines))
    results["report"] = str(path)
    write_json(out / RESULTS_FILE, results)
    return path
