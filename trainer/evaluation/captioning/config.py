"""``videobert caption``'s configuration: the rows of the table and ``CaptionConfig``."""

from __future__ import annotations

from dataclasses import dataclass

from videobert.models.errors import VideoBertError
from videobert.trainer.evaluation.captioning.features import CAPTION_TEMPLATE
from videobert.trainer.evaluation.captioning.training import CaptionerSettings

ROWS: dict[str, tuple[str, ...]] = {
    "no_video": (),
    "encoder": ("encoder",),
    "videobert": ("videobert",),
    "videobert_encoder": ("videobert", "encoder"),
}
"""Row name -> the features its captioner reads, in order."""
PAPER_ORDER = (("videobert_encoder", "encoder"), ("videobert", "no_video"))
"""Table 3's order: each (better, than) pair of rows the paper reports, checked on every table with
a paired interval (``metrics.paired_difference``)."""
ROW_LABELS = {"no_video": "no video (best constant sentence)", "encoder": "clip encoder features",
              "videobert": "VideoBERT features", "videobert_encoder": "VideoBERT + clip encoder features"}


@dataclass(frozen=True, kw_only=True)
class CaptionConfig(CaptionerSettings):
    """What ``videobert caption`` reads, trains and writes (the captioner's fields: ``CaptionerSettings``)."""

    model: str
    """A run folder, a step-N checkpoint folder, or an exported transformers directory."""
    train: tuple[str, ...] = ()
    """Shards of the labelled training segments (their text is the reference caption)."""
    heldout: tuple[str, ...] = ()
    """Shards of the labelled held-out segments that are captioned and scored."""
    out: str | None = None
    """Output folder (default: RUN/caption, or caption/ inside an exported directory)."""
    rows: tuple[str, ...] = tuple(ROWS)
    """Rows of the table to train (no_video, encoder, videobert, videobert_encoder)."""
    labels: str | None = None
    """Per-segment verb and noun labels for the linear probes (``trainer.evaluation.labels``)."""
    vocabulary: str | None = None
    """Label vocabulary JSON ``{"verbs": [...], "nouns": [...]}`` for the probes."""
    clips: tuple[str, ...] = ()
    """Clip shards of the held-out segments: frames for the captioned examples."""
    codebook: str | None = None
    """Codebook file (default: the run's ``data.codebook``); clip shards need it."""
    encoder_weights: str | None = None
    """Weights of the codebook's clip encoder, when it needs them (default: the run's)."""
    template: str = CAPTION_TEMPLATE
    """The sentence before the video tokens; its [MASK] outputs are half of VideoBERT's feature."""
    max_seq_len: int | None = None
    """Longest sequence (default: the run's ``data.max_seq_len``; 128 without a run config)."""
    decoding: str = "beam"
    """``beam`` or ``greedy``."""
    beam: int = 3
    """Beam width of beam decoding."""
    examples: int = 6
    """Held-out segments shown with their frames and every row's caption."""
    java: bool = True
    """Score with the Java tools (the PTB tokenizer, METEOR) when a Java runtime is present; off: the
    plain tokenization and no METEOR column."""
    overwrite: bool = False
    """Start afresh: remove the rows' checkpoints and the features of an earlier run in ``out``."""
    progress: bool = True
    """Progress bars on rank 0."""

    def __post_init__(self) -> None:
        problems = [f"--rows: unknown row {r!r} (known: {', '.join(ROWS)})" for r in self.rows if r not in ROWS]
        if self.decoding not in ("beam", "greedy"):
            problems.append(f"--decoding {self.decoding!r}: use beam or greedy")
        if self.beam < 1 or self.steps < 1 or self.batch_size < 1 or self.max_words < 1 or self.captioners < 1:
            problems.append("--beam, --steps, --batch-size, --max-words and --captioners must be positive")
        if bool(self.labels) != bool(self.vocabulary):
            problems.append("the probes need both --labels and --vocabulary")
        if problems:
            raise VideoBertError("; ".join(problems))

    def settings(self) -> CaptionerSettings:
        return CaptionerSettings(**{k: getattr(self, k) for k in CaptionerSettings.__dataclass_fields__})
