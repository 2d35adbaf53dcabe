"""Zero-shot action classification as in the paper (Sun et al. 2019, section 4.2 and Table 1).

Each labelled segment's video tokens follow a fixed sentence whose verb and noun are masked:

    [CLS] now let me show you how to [MASK] the [MASK] [>] video-tokens [SEP]

The verb is read from the first mask and the noun from the second, scores restricted to the label
vocabulary (``trainer.evaluation.labels``); top-1 and top-5 accuracies are reported. Beside them, as in the
paper's Table 1: the language prior (the same model given the sentence alone, ``[CLS] sentence
[SEP]``: one prediction for every segment), uniform chance (k / classes), and the best constant
guess (the share of the k most frequent true labels: the most any prediction that ignores the video
can reach, the language prior included). Each accuracy but uniform chance (exact) has its Wilson 95 %
interval over the segments (``<key>_ci``, ``trainer.evaluation.intervals``).

Labels of several WordPieces. A label of k pieces is scored in a sentence with k masks in its slot
(the other slot keeps the number of masks most labels of its kind need), as the mean of the
log-probabilities of its pieces, each at its own mask, over the text vocabulary. One forward pass is
made per distinct (verb masks, noun masks) shape; single-piece labels all share the first. For
single-piece labels the ranking equals the ranking of their logits at the mask.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from videobert.models.errors import VideoBertError
from videobert.models.vocab import JOINT_SPECIAL_COUNT, JointVocab, fit_lengths
from videobert.trainer import distributed
from videobert.trainer.evaluation import intervals
from videobert.trainer.evaluation.labels import LabelIndex, LabelVocabulary

PAPER_TEMPLATE = "now let me show you how to {verb} the {noun}"
TOP_K = (1, 5)
MODES = ("language_prior", "cross_modal")
SLOTS = ("verb", "noun")
_SLOT = re.compile(r"(\{verb\}|\{noun\})")


class ZeroShotError(VideoBertError, ValueError):
    """A template, label vocabulary or sequence length that zero-shot classification cannot use."""


@dataclass(frozen=True)
class Prompt:
    """A tokenized template: WordPiece ids with ``[MASK]`` in the slots, and where the slots are."""

    text_ids: tuple[int, ...]
    verb_at: tuple[int, ...]
    """Indices into ``text_ids`` of the verb's masks (add 1 for the position after [CLS])."""
    noun_at: tuple[int, ...]


def build_prompt(tokenizer: Any, mask_id: int, template: str = PAPER_TEMPLATE, verb_pieces: int = 1,
                 noun_pieces: int = 1) -> Prompt:
    """The template with ``verb_pieces`` masks for ``{verb}`` and ``noun_pieces`` for ``{noun}``."""
    parts = _SLOT.split(template.lower())
    slots = [p for p in parts if _SLOT.fullmatch(p)]
    if sorted(slots) != ["{noun}", "{verb}"]:
        raise ZeroShotError(f"template {template!r} must contain {{verb}} and {{noun}} once each")
    ids: list[int] = []
    at: dict[str, tuple[int, ...]] = {}
    for part in parts:
        if part in ("{verb}", "{noun}"):
            count = verb_pieces if part == "{verb}" else noun_pieces
            at[part] = tuple(range(len(ids), len(ids) + count))
            ids += [mask_id] * count
        elif part.strip():
            ids += tokenizer(part.strip(), add_special_tokens=False)["input_ids"]
    return Prompt(text_ids=tuple(ids), verb_at=at["{verb}"], noun_at=at["{noun}"])


def label_pieces(tokenizer: Any, words: Sequence[str]) -> list[tuple[int, ...]]:
    """The WordPiece ids of each label."""
    pieces = [tuple(p) for p in tokenizer(list(words), add_special_tokens=False)["input_ids"]]
    empty = [w for w, p in zip(words, pieces) if not p]
    if empty:
        raise ZeroShotError(f"labels {empty} tokenize to nothing")
    return pieces


class ZeroShotClassifier:
    """Scores the label vocabulary at the template's masks, with or without video tokens."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, vocab: JointVocab, labels: LabelVocabulary, *,
                 template: str = PAPER_TEMPLATE, max_seq_len: int = 128, device: torch.device | str = "cpu"):
        self.model, self.vocab, self.labels = model, vocab, labels
        self.device = torch.device(device)
        self.max_seq_len = max_seq_len
        self.pieces = {"verb": label_pieces(tokenizer, labels.verbs), "noun": label_pieces(tokenizer, labels.nouns)}
        usual = {slot: Counter(len(p) for p in pieces).most_common(1)[0][0] for slot, pieces in self.pieces.items()}
        self.shape_of = {
            "verb": [(len(p), usual["noun"]) for p in self.pieces["verb"]],
            "noun": [(usual["verb"], len(p)) for p in self.pieces["noun"]],
        }
        shapes = sorted(set(self.shape_of["verb"]) | set(self.shape_of["noun"]))
        self.prompts = {s: build_prompt(tokenizer, vocab.mask_id, template, *s) for s in shapes}
        self.base = self.prompts[(usual["verb"], usual["noun"])]
        longest = max(len(p.text_ids) for p in self.prompts.values())
        if longest + JOINT_SPECIAL_COUNT > max_seq_len:
            raise ZeroShotError(f"the template needs {longest + JOINT_SPECIAL_COUNT} tokens with its specials; max_seq_len is {max_seq_len}")

    def mask_log_probs(self, prompt: Prompt, videos: Sequence[np.ndarray] | None) -> torch.Tensor:
        return mask_log_probs(self.model, self.vocab, prompt, videos, self.max_seq_len, self.device)

    def score(self, videos: Sequence[np.ndarray] | None) -> dict[str, torch.Tensor]:
        """{"verb": (B, verbs), "noun": (B, nouns)}: mean piece log-probability of every label."""
        per_shape = {shape: self.mask_log_probs(prompt, videos) for shape, prompt in self.prompts.items()}
        scores = {}
        for slot in SLOTS:
            columns = []
            for pieces, shape in zip(self.pieces[slot], self.shape_of[slot]):
                offset = 0 if slot == "verb" else shape[0]
                lp = per_shape[shape][:, offset : offset + len(pieces)]  # (B, pieces, V)
                columns.append(lp.gather(2, torch.tensor(pieces).view(1, -1, 1).expand(lp.shape[0], -1, 1)).mean(dim=(1, 2)))
            scores[slot] = torch.stack(columns, dim=1)
        return scores


@torch.no_grad()
def mask_log_probs(model: torch.nn.Module, vocab: JointVocab, prompt: Prompt, videos: Sequence[np.ndarray] | None,
                   max_seq_len: int, device: torch.device) -> torch.Tensor:
    """(B, masks, text vocabulary) log-probabilities at the prompt's masks, verb masks first.
    ``videos``: visual-token ids per example (``[CLS] prompt [>] video [SEP]``), or None for the
    prompt alone (``[CLS] prompt [SEP]``, B = 1)."""
    rows = prompt_sequences(vocab, prompt, videos, max_seq_len)
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), vocab.pad_id, dtype=torch.long)
    token_types = torch.zeros_like(input_ids)
    attention = torch.zeros_like(input_ids)
    for row, (ids, types) in enumerate(rows):
        input_ids[row, : len(ids)], token_types[row, : len(ids)] = torch.tensor(ids), torch.tensor(types)
        attention[row, : len(ids)] = 1
    hidden = model.encode(input_ids.to(device), token_types.to(device), attention.to(device))  # (B, T, H)
    positions = torch.tensor([1 + p for p in (*prompt.verb_at, *prompt.noun_at)], device=device)
    at_masks = hidden[:, positions]  # (B, M, H)
    logits = model.mlm_logits(at_masks.reshape(-1, at_masks.shape[-1]))[:, : vocab.text_vocab_size]
    return torch.log_softmax(logits.float(), dim=-1).reshape(len(rows), len(positions), -1).cpu()


def prompt_sequences(vocab: JointVocab, prompt: Prompt, videos: Sequence[np.ndarray] | None,
                     max_seq_len: int) -> list[tuple[list[int], list[int]]]:
    """(ids, token types) per example; the video is cut (never the prompt) to fit ``max_seq_len``."""
    if videos is None:
        return [vocab.text_sequence(prompt.text_ids)]
    rows = []
    for video in videos:
        n_text, n_video = fit_lengths(len(prompt.text_ids), len(video), max_seq_len - JOINT_SPECIAL_COUNT)
        if n_text < len(prompt.text_ids):
            raise ZeroShotError(f"max_seq_len {max_seq_len} would cut the template; raise it")
        rows.append(vocab.joint_sequence(prompt.text_ids, [int(v) for v in video[:n_video]]))
    return rows


@dataclass
class ZeroShotTally:
    """Top-k hits per mode and slot, and the histogram of true labels (for the constant-guess row)."""

    n_classes: dict[str, int]
    hits: np.ndarray = field(init=False)
    """(modes, slots, ks)."""
    histograms: dict[str, np.ndarray] = field(init=False)
    count: int = 0

    def __post_init__(self) -> None:
        self.hits = np.zeros((len(MODES), len(SLOTS), len(TOP_K)))
        self.histograms = {slot: np.zeros(n) for slot, n in self.n_classes.items()}

    def add(self, mode: str, scores: dict[str, torch.Tensor], targets: dict[str, np.ndarray]) -> None:
        for s, slot in enumerate(SLOTS):
            ranked = torch.argsort(scores[slot], dim=1, descending=True).numpy()  # (B, classes)
            rank_of_target = (ranked == targets[slot][:, None]).argmax(axis=1)
            for k_index, k in enumerate(TOP_K):
                self.hits[MODES.index(mode), s, k_index] += float((rank_of_target < k).sum())

    def add_targets(self, targets: dict[str, np.ndarray]) -> None:
        self.count += len(targets["verb"])
        for slot in SLOTS:
            np.add.at(self.histograms[slot], targets[slot], 1)

    def reduce(self) -> dict[str, Any]:
        """Accuracies over all ranks (collective), with their intervals (``<key>_ci``)."""
        flat = np.concatenate([[self.count], self.hits.ravel(), *(self.histograms[s] for s in SLOTS)])
        total = distributed.sum_across_ranks(flat)
        count = total[0]
        hits = total[1 : 1 + self.hits.size].reshape(self.hits.shape)
        rest = total[1 + self.hits.size :]
        histograms = {"verb": rest[: self.n_classes["verb"]], "noun": rest[self.n_classes["verb"] :]}
        out: dict[str, Any] = {"segments": float(count)}
        for s, slot in enumerate(SLOTS):
            n = self.n_classes[slot]
            frequent = np.sort(histograms[slot])[::-1]
            for k_index, k in enumerate(TOP_K):
                out[f"chance_{slot}_top{k}"] = min(k, n) / n
                out[f"constant_{slot}_top{k}"] = float(frequent[:k].sum() / max(count, 1))
                out[f"constant_{slot}_top{k}_ci"] = intervals.as_list(intervals.wilson(float(frequent[:k].sum()), count))
                for m, mode in enumerate(MODES):
                    out[f"{mode}_{slot}_top{k}"] = float(hits[m, s, k_index] / max(count, 1))
                    out[f"{mode}_{slot}_top{k}_ci"] = intervals.as_list(intervals.wilson(float(hits[m, s, k_index]), count))
        return out


@dataclass
class ZeroShotResult:
    results: dict[str, Any]
    """Accuracies (``{mode}_{slot}_top{k}``, ``chance_...``, ``constant_...``), ``segments``, and the
    language prior's own top-5 (``language_prior_top``)."""
    records: list[dict[str, Any]]
    """Rank 0: one per scored segment (key, video, span, true and top-5 predicted labels)."""
    problems: list[dict[str, Any]]
    """Rank 0: every sample that was read but not scored, with the reason."""


@dataclass(frozen=True)
class EvalSegment:
    """A segment to classify: its key, where it comes from, and its visual-token ids."""

    key: str
    video: str
    start: float
    end: float
    tokens: np.ndarray


def evaluate_zeroshot(classifier: ZeroShotClassifier, shards: Sequence[Sequence[EvalSegment]], labels: LabelIndex,
                      batch_size: int = 32) -> ZeroShotResult:
    """Classify every labelled segment of this rank's shards; totals over all ranks (collective)."""
    vocab = classifier.labels
    tally = ZeroShotTally({"verb": len(vocab.verbs), "noun": len(vocab.nouns)})
    prior = classifier.score(None)
    records, problems = [], []
    for segments in shards:
        labelled = []
        for seg in segments:
            label = labels.find(seg.video, seg.start, seg.end)
            if label is None:
                problems.append({"key": seg.key, "video": seg.video, "reason": "no labelled segment overlaps it"})
            else:
                labelled.append((seg, label))
        for start in range(0, len(labelled), batch_size):
            batch = labelled[start : start + batch_size]
            targets = {"verb": np.array([vocab.verbs.index(lb.verb) for _, lb in batch]),
                       "noun": np.array([vocab.nouns.index(lb.noun) for _, lb in batch])}
            scores = classifier.score([seg.tokens for seg, _ in batch])
            tally.add_targets(targets)
            tally.add("cross_modal", scores, targets)
            tally.add("language_prior", {s: v.expand(len(batch), -1) for s, v in prior.items()}, targets)
            records += [_record(seg, lb, scores, i, vocab) for i, (seg, lb) in enumerate(batch)]
    results = tally.reduce()
    results["language_prior_top"] = {s: _top(prior[s][0], getattr(vocab, s + "s"), 5) for s in SLOTS}
    return ZeroShotResult(results, distributed.gather_lists(records), distributed.gather_lists(problems))


def _record(seg: EvalSegment, label, scores: dict[str, torch.Tensor], row: int, vocab: LabelVocabulary) -> dict[str, Any]:
    return {
        "key": seg.key, "video": seg.video, "start": seg.start, "end": seg.end, "verb": label.verb, "noun": label.noun,
        "predicted_verbs": _top(scores["verb"][row], vocab.verbs, 5),
        "predicted_nouns": _top(scores["noun"][row], vocab.nouns, 5),
    }


def _top(scores: torch.Tensor, names: Sequence[str], k: int) -> list[str]:
    return [names[i] for i in torch.argsort(scores, descending=True)[:k].tolist()]
