"""The evaluation tables, laid out once: each is built as a ``Table`` from the results and then
printed as aligned plain text (``format_table``: what ``eval``, ``caption``, ``train`` and ``demo``
print) or written as markdown (``markdown_table``: ``report.md``), so both show the same cells.

A figure with a 95 % interval in the results (``<key>_ci``, ``trainer.evaluation.intervals``) is
shown as ``value [low, high]``, the bounds in the value's own number format; chance levels are exact
and have none. Each table says how many targets or segments its figures are over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from videobert.trainer.evaluation.captioning.metrics import METRIC_LABELS, METRICS, format_score
from videobert.trainer.evaluation.heldout import TABLE_ROWS as HELDOUT_ROWS
from videobert.trainer.evaluation.masked_video import TABLE_ROWS as IN_TURN_ROWS
from videobert.trainer.evaluation.retrieval import DIRECTIONS, RANKINGS, RECALL_AT
from videobert.trainer.evaluation.zeroshot import SLOTS, TOP_K


@dataclass(frozen=True)
class Table:
    """Rows of cells under column headers; the first column holds each row's label."""

    title: str
    """The label column's header in plain text (the table's name)."""
    columns: Sequence[str]
    rows: Sequence[tuple[str, Sequence[str]]]
    note: str = ""
    """One line under the plain-text table (markdown tables carry it in their section's prose)."""
    label_header: str = ""
    """The label column's header in markdown."""
    numeric: bool = True
    """Cells right-aligned (figures) rather than left-aligned (text)."""


def format_table(table: Table) -> str:
    """Aligned plain text: a header, a rule, the rows and the note in brackets."""
    label_width = max([len(table.title)] + [len(label) for label, _ in table.rows]) + 2
    widths = [max([len(c)] + [len(cells[i]) for _, cells in table.rows]) + 2 for i, c in enumerate(table.columns)]
    align = str.rjust if table.numeric else str.ljust
    head = table.title.ljust(label_width) + "".join(align(c, w) for c, w in zip(table.columns, widths))
    lines = [head, "-" * len(head)]
    lines += [label.ljust(label_width) + "".join(align(c, w) for c, w in zip(cells, widths)) for label, cells in table.rows]
    if table.note:
        lines.append(f"({table.note})")
    return "\n".join(lines)


def markdown_table(table: Table) -> list[str]:
    """The same table as markdown lines."""
    rule = "---:|" if table.numeric else "---|"
    lines = [f"| {table.label_header} | " + " | ".join(table.columns) + " |", "|---|" + rule * len(table.columns)]
    return lines + [f"| {label} | " + " | ".join(cells) + " |" for label, cells in table.rows]


def percent(x: float) -> str:
    return f"{100 * x:.1f} %"


def with_interval(value: str, interval: Sequence[float] | None, bound: Callable[[float], str]) -> str:
    """A cell: the formatted value, then its interval's bounds formatted by ``bound`` (the value's
    number format), or the value alone when there is no interval."""
    return value if interval is None else f"{value} [{bound(interval[0])}, {bound(interval[1])}]"


def percent_cell(results: dict[str, Any], key: str) -> str:
    """``results[key]`` in percent with its interval (``results[key + "_ci"]``) when there is one."""
    return with_interval(percent(results[key]), results.get(f"{key}_ci"), lambda x: f"{100 * x:.1f}")


def fixed_cell(results: dict[str, Any], key: str, digits: int = 3) -> str:
    """``results[key]`` with ``digits`` decimals and its interval when there is one."""
    return with_interval(f"{results[key]:.{digits}f}", results.get(f"{key}_ci"), lambda x: f"{x:.{digits}f}")


INTERVALS = "95 % intervals in brackets"


# ---------------------------------------------------------------------------------------------
# the tables


ZEROSHOT_ROWS = (("chance (uniform guess)", "chance"), ("best constant guess", "constant"),
                 ("language prior (no video)", "language_prior"), ("cross-modal (with video)", "cross_modal"))


def zeroshot_table(z: dict[str, Any]) -> Table:
    """The paper's Table 1 layout, in percent."""
    rows = [(label, [percent_cell(z, f"{prefix}_{s}_top{k}") for s in SLOTS for k in TOP_K]) for label, prefix in ZEROSHOT_ROWS]
    return Table("zero-shot classification", [f"{s} top-{k}" for s in SLOTS for k in TOP_K], rows,
                 note=f"{int(z['segments'])} labelled held-out segments; {INTERVALS} (Wilson)")


def heldout_table(h: dict[str, Any], title: str = "held-out") -> Table:
    """Held-out figures beside their chance levels."""
    rows = [(label, [fixed_cell(h, value), f"{h[chance]:.3f}", str(int(h[count]))])
            for label, value, chance, count in HELDOUT_ROWS if value in h]
    return Table(title, ["model", "chance", "targets"], rows,
                 note=f"{INTERVALS}: Wilson for accuracies, a bootstrap over the alignment examples for balanced "
                      "accuracy and ROC-AUC; perplexities have none (the pass keeps loss totals, not per-target losses)")


def in_turn_table(r: dict[str, Any]) -> Table:
    """Every held-out video token masked once: the model against unigrams and copying a neighbour,
    then the same on the targets where the neighbour's word differs ("there")."""
    rows = [(label, [fixed_cell(r, acc), f"{r[ppl]:.2f}" if ppl else "-"]) for label, acc, ppl in IN_TURN_ROWS if acc in r]
    there = (f"; there: the {int(r['neighbour_differs_targets'])} whose neighbouring clip's word differs, where copying "
             "scores 0" if "neighbour_differs_targets" in r else "")
    return Table("video tokens masked in turn", ["accuracy", "perplexity"], rows,
                 note=f"{int(r['targets'])} held-out visual tokens, each masked once{there}; "
                      f"{INTERVALS} (Wilson), none for perplexities")


def retrieval_table(r: dict[str, Any]) -> Table:
    """Both directions of each ranking, chance in brackets."""
    rows = []
    for label, key in RANKINGS:
        ranking = r if key is None else r.get(key)
        for direction in DIRECTIONS if ranking else ():
            d = ranking[direction]
            cells = [f"{percent_cell(d, f'r{k}')} ({percent(d[f'r{k}_chance'])})" for k in RECALL_AT]
            rows.append((f"{direction.replace('_', ' ')}, {label}",
                         cells + [f"{fixed_cell(d, 'median_rank', 1)} ({d['median_rank_chance']:.1f})"]))
    return Table("retrieval", [f"R@{k}" for k in RECALL_AT] + ["median rank"], rows, label_header="direction, ranked by",
                 note=f"{r['segments']} held-out segments (queries), {r['distinct_captions']} distinct captions; "
                      f"chance in round brackets, {INTERVALS.replace('brackets', 'square brackets')} (bootstrap over the queries)")


def caption_table(c: dict[str, Any]) -> Table:
    """The captioning table (the paper's Table 3 layout); with several captioners per row, a last
    column gives each captioner's CIDEr."""
    def cell(scores: dict[str, Any], m: str) -> str:
        return with_interval(format_score(m, scores[m]), scores.get(f"{m}_ci"), lambda x: format_score(m, x))

    several = captioners_of(c) > 1
    rows = [(c["row_labels"][row], [cell(scores, m) for m in METRICS]
             + ([" / ".join(f"{v:.2f}" for v in scores.get("cider_by_captioner", []))] if several else []))
            for row, scores in c["rows"].items()]
    tokenizer = next(iter(c["rows"].values()))["tokenizer"] if c["rows"] else ""
    return Table("captioning", [METRIC_LABELS[m] for m in METRICS] + (["CIDEr by captioner"] if several else []), rows,
                 label_header="features",
                 note=f"{c['heldout_segments']} held-out segments, {c['distinct_references']} distinct references; "
                      f"{c['decoding']} decoding; tokens: {tokenizer}; BLEU, METEOR, ROUGE-L in %; {INTERVALS} "
                      f"({interval_basis(c)}; none for METEOR, whose corpus score is not made of per-segment parts)")


def captioners_of(c: dict[str, Any]) -> int:
    """Captioners per row of a captioning result (1 in results written before rows had several)."""
    return int(c.get("captioners", 1))


def interval_basis(c: dict[str, Any]) -> str:
    """What the captioning intervals resample, in words."""
    k = captioners_of(c)
    if k > 1:
        return f"each row the mean of {k} captioners trained from different seeds; bootstrap over the segments and the captioners"
    return "one captioner per row; bootstrap over the segments"


PROBE_ROWS = (("constant", "best constant guess"), ("encoder", "clip encoder features"), ("videobert", "VideoBERT features"))


def probe_table(accuracy: dict[str, dict[str, Any]], segments: int | None = None) -> Table:
    """Linear probes' held-out accuracy by features (``segments``: how many held-out segments)."""
    rows = [(label, [percent_cell(accuracy[name], "verb"), percent_cell(accuracy[name], "noun")])
            for name, label in PROBE_ROWS if name in accuracy]
    counted = f"{segments} labelled held-out segments; " if segments is not None else ""
    return Table("linear probe (held-out accuracy)", ["verb", "noun"], rows, label_header="features",
                 note=f"{counted}{INTERVALS} (Wilson)")


VERDICTS = {"unresolved": "not resolved: the interval holds 0, these segments and captioners cannot tell the two rows apart"}
"""How a verdict of ``metrics.paired_difference`` is printed, where it is not its own word."""


def order_lines(c: dict[str, Any]) -> list[str]:
    """Table 3's order, one line per pair of rows: the paired CIDEr difference, its interval, the
    verdict, and each pair of captioners' difference when there are several."""
    lines = []
    for o in c.get("order", []):
        low, high = o["difference_ci"]
        each = o.get("difference_by_captioner", [])
        spread = f" (captioner by captioner: {', '.join(f'{d:+.2f}' for d in each)})" if len(each) > 1 else ""
        lines.append(f"{c['row_labels'][o['better']]} - {c['row_labels'][o['than']]}: {METRIC_LABELS[o['metric']]} "
                     f"{o['difference']:+.3f} [{low:+.3f}, {high:+.3f}]{spread}: "
                     f"{VERDICTS.get(o['verdict'], o['verdict'])}")
    return lines


def order_heading(c: dict[str, Any]) -> str:
    """What the order's intervals cover, in a sentence."""
    if captioners_of(c) > 1:
        return (f"Table 3's order (paired difference over the same held-out segments, 95 % bootstrap interval over the "
                f"segments and over each row's {captioners_of(c)} captioners: it covers another training of the captioners)")
    return ("Table 3's order (paired difference over the same held-out segments, 95 % bootstrap interval over the "
            "segments; one captioner per row, so another training of the captioners can move a row by more)")


def encoder_explains_order(c: dict[str, Any], enough: float = 0.9) -> str | None:
    """A sentence for a VideoBERT + encoder row that does not beat the encoder row when the linear
    probes show the encoder's own features already name the verb and the noun of (nearly) every
    held-out segment, the lower end of both 95 % intervals at ``enough`` or above; else None."""
    order = {(o["better"], o["than"]): o for o in c.get("order", [])}
    pair = order.get(("videobert_encoder", "encoder"))
    encoder = c.get("probes", {}).get("accuracy", {}).get("encoder")
    if pair is None or pair["verdict"] == "holds" or not encoder:
        return None
    if min(encoder.get("verb_ci", [0])[0], encoder.get("noun_ci", [0])[0]) < enough:
        return None
    return (f"The clip encoder's own features name the verb and the noun of {100 * encoder['verb']:.0f} % and "
            f"{100 * encoder['noun']:.0f} % of the held-out segments (linear probes); VideoBERT's visual words are "
            "drawn from those same features, so there is little left for VideoBERT's features to add to them here.")


def format_caption_tables(c: dict[str, Any]) -> str:
    """The captioning table, Table 3's order with paired intervals and, when they ran, the probes."""
    parts = [format_table(caption_table(c))]
    if c.get("order"):
        parts[0] += f"\n{order_heading(c)}:\n" + "\n".join(f"  {line}" for line in order_lines(c))
        explained = encoder_explains_order(c)
        if explained:
            parts[0] += f"\n  {explained}"
    probes = c.get("probes", {}).get("accuracy")
    if probes:
        parts.append(format_table(probe_table(probes, c["probes"].get("heldout_segments"))))
    return "\n\n".join(parts)


def format_tables(results: dict[str, Any]) -> str:
    """The zero-shot, held-out, retrieval and captioning tables (what ``eval`` and ``demo`` print)."""
    builders = (("zero_shot", zeroshot_table), ("heldout", heldout_table), ("heldout_video_in_turn", in_turn_table),
                ("retrieval", retrieval_table))
    parts = [format_table(build(results[key])) for key, build in builders if key in results]
    if "captioning" in results:
        parts.append(format_caption_tables(results["captioning"]))
    return "\n\n".join(parts)
