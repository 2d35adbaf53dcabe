"""VideoBERT's training examples: from a batch of caption segments to model inputs and targets.

For each item (one segment, or several neighbouring segments of one video joined by the stream):

1. its kind is drawn: joint ``[CLS] text [>] video [SEP]``, text-only or video-only, with the
   configured shares;
2. its video is subsampled at a random stride in [1, max_stride] from a random offset (the paper's
   augmentation), among the strides that keep at least ``stride_min_tokens`` tokens;
3. alignment negatives (label 1 = misaligned, 0 = aligned, as BERT's next-sentence labels), from the
   (subsampled) video of another item of the batch from a different video, one of two ways:

   * ``negatives_per_positive == 0`` (the paper's): a joint item becomes a negative with probability
     ``negative_rate``, its video replaced, and loses its masked-token targets;
   * ``negatives_per_positive == K >= 1``: every joint item stays aligned and keeps its targets,
     and K extra rows pair its text with K other videos (the batch grows by K rows per joint
     item). Rows of one item form a group (``alignment_groups``: the item's index on every row
     of it, -1 on rows without an alignment label), which the listwise alignment loss scores
     together;
4. text is WordPiece-tokenized here, in the data worker, with the fast tokenizer;
5. text and video are cut to fit ``max_seq_len`` by ``models.vocab.fit_lengths``;
6. tokens are chosen for masked prediction with the configured probabilities and replaced as BERT
   does: 80 % ``[MASK]``, 10 % a random token of the same modality, 10 % unchanged; a misaligned
   pair is corrupted the same way, without labels unless ``mlm_on_negatives``, so that masks never
   tell the alignment head which pairs are aligned. With probability ``video_span_mask_prob`` an
   aligned joint item has its whole video masked (every position ``[MASK]``, every one a target):
   no visible neighbour is left to copy, so the text must predict the video. Such a row carries
   no alignment label (its video is hidden).

Video positions are built as references into a per-batch table of clips: for token shards the table
holds visual-token ids and is resolved here; for clip shards it holds frames, and the trainer resolves
it inside the step after the frozen visual tokenizer has run (``resolve_visual``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from videobert.models.vocab import IGNORE_INDEX, JOINT_SPECIAL_COUNT, SINGLE_SPECIAL_COUNT, JointVocab, fit_lengths
from videobert.shards import schema
from videobert.trainer.config import ObjectivesConfig

JOINT, TEXT_ONLY, VIDEO_ONLY = 0, 1, 2
KIND_NAMES = ("joint", "text", "video")
ALIGNED, MISALIGNED = 0, 1
PAD_MULTIPLE = 8


@dataclass
class TrainingItem:
    """One item as the builder sees it: a caption segment, or several neighbouring segments of one
    video joined by the stream; its text, its video id and its clips (tokens or frames)."""

    key: str
    video_id: str
    text: str
    clips: np.ndarray
    """(n_clips,) int visual-token ids, or (n_clips, T, H, W, 3) uint8 frames."""


def join_samples(samples: Sequence[schema.Sample]) -> TrainingItem:
    """Neighbouring segments of one video as one item: texts joined, clips concatenated."""
    first = samples[0]
    arrays = [s.tokens if s.meta.kind == schema.TOKEN_KIND else s.frames for s in samples]
    return TrainingItem(
        key=first.key,
        video_id=first.meta.video_id,
        text=" ".join(s.text.strip() for s in samples),
        clips=arrays[0] if len(arrays) == 1 else np.concatenate(arrays),
    )


@dataclass
class _Plan:
    kind: int
    text_ids: list[int]
    video: list[int]
    """Rows of the batch's clip table."""
    alignment: int
    group: int = -1
    """The item whose text the row carries, for rows with an alignment label (-1: none)."""
    span_masked: bool = False
    """The whole video is masked (``video_span_mask_prob``)."""


class ExampleBuilder:
    """Turns a list of ``TrainingItem`` into one padded batch of numpy arrays (see ``build``)."""

    def __init__(self, vocab: JointVocab, tokenizer: Any, objectives: ObjectivesConfig, max_seq_len: int):
        self.vocab = vocab
        self.tokenizer = tokenizer
        self.obj = objectives
        self.max_seq_len = max_seq_len
        self.kind_p = np.array([objectives.joint_fraction, objectives.text_fraction, objectives.video_fraction])
        self.random_text_ids = _ordinary_token_ids(tokenizer, vocab.text_vocab_size)

    def build(self, items: Sequence[TrainingItem], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A batch: input_ids, token_type_ids, attention_mask, mlm_labels, alignment_labels,
        alignment_groups, kind (one per row: items first, in order, then any extra negative rows),
        and the clip table with its references (``clips``/``tokens``, ``video_ref``, ``label_ref``)."""
        table, offsets = _clip_table(items)
        selections = [self._subsample(len(it.clips), rng) + offsets[i] for i, it in enumerate(items)]
        kinds = rng.choice(3, size=len(items), p=self.kind_p)
        texts = self._tokenize([it.text if k != VIDEO_ONLY else "" for it, k in zip(items, kinds)])
        donors = [_donors(items, i) for i in range(len(items))]
        plans = [self._plan(i, int(kinds[i]), texts[i], selections, donors[i], rng) for i in range(len(items))]
        plans += self._extra_negatives(plans, selections, donors, rng)
        rows = [self._row(p, rng) for p in plans]
        batch = _pad(rows, self.vocab.pad_id)
        batch["kind"] = np.array([p.kind for p in plans], dtype=np.int64)
        batch["alignment_labels"] = np.array([p.alignment for p in plans], dtype=np.int64)
        batch["alignment_groups"] = np.array([p.group for p in plans], dtype=np.int64)
        if table.ndim == 1:
            resolve_visual(batch, table, self.vocab)
        else:
            batch["clips"] = table
        return batch

    # -- per item ---------------------------------------------------------------------------

    def _subsample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        longest = max(1, min(self.obj.max_stride, n // self.obj.stride_min_tokens))  # keeps >= stride_min_tokens
        stride = int(rng.integers(1, longest + 1))
        start = int(rng.integers(0, stride)) if n > stride else 0
        return np.arange(start, n, stride)

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _plan(self, i, kind, text_ids, selections, donors, rng) -> _Plan:
        plan = _Plan(kind=kind, text_ids=list(text_ids), video=list(selections[i]), alignment=IGNORE_INDEX)
        if kind != JOINT:
            return plan
        plan.alignment, plan.group = ALIGNED, i
        if self.obj.negatives_per_positive == 0 and donors and rng.random() < self.obj.negative_rate:
            plan.video = list(selections[int(rng.choice(donors))])
            plan.alignment = MISALIGNED
        elif self.obj.video_span_mask_prob and rng.random() < self.obj.video_span_mask_prob:
            plan.span_masked = True
            plan.alignment, plan.group = IGNORE_INDEX, -1
        return plan

    def _extra_negatives(self, plans, selections, donors_of, rng) -> list[_Plan]:
        """K rows per aligned joint item (``negatives_per_positive``): its text, other items' videos
        (distinct donors while there are enough of them)."""
        k = self.obj.negatives_per_positive
        extra: list[_Plan] = []
        for i, plan in enumerate(plans if k else ()):
            donors = donors_of[i]
            if plan.alignment != ALIGNED or not donors:
                continue
            chosen = rng.choice(donors, size=k, replace=len(donors) < k)
            extra += [_Plan(kind=JOINT, text_ids=plan.text_ids, video=list(selections[int(j)]), alignment=MISALIGNED,
                            group=i) for j in chosen]
        return extra

    def _row(self, plan: _Plan, rng: np.random.Generator) -> dict[str, np.ndarray]:
        v = self.vocab
        if plan.kind == JOINT:
            n_text, n_video = fit_lengths(len(plan.text_ids), len(plan.video), self.max_seq_len - JOINT_SPECIAL_COUNT)
            ids, types = v.joint_sequence(plan.text_ids[:n_text], [0] * n_video)
        elif plan.kind == TEXT_ONLY:
            n_text, n_video = min(len(plan.text_ids), self.max_seq_len - SINGLE_SPECIAL_COUNT), 0
            ids, types = v.text_sequence(plan.text_ids[:n_text])
        else:
            n_text, n_video = 0, min(len(plan.video), self.max_seq_len - SINGLE_SPECIAL_COUNT)
            ids, types = v.video_sequence([0] * n_video)
        ids = np.array(ids, dtype=np.int64)
        video_ref = np.full(len(ids), -1, dtype=np.int64)
        first_video = len(ids) - 1 - n_video
        video_ref[first_video : first_video + n_video] = plan.video[:n_video]
        text_pos = np.arange(1, 1 + n_text)
        video_pos = np.arange(first_video, first_video + n_video)
        masked = plan.alignment != MISALIGNED or self.obj.mlm_on_negatives
        labels, label_ref = self._mask(ids, video_ref, text_pos, video_pos, rng, masked, plan.span_masked)
        return dict(input_ids=ids, token_type_ids=np.array(types, dtype=np.int64), mlm_labels=labels,
                    video_ref=video_ref, label_ref=label_ref)

    def _mask(self, ids, video_ref, text_pos, video_pos, rng, labelled: bool, whole_video: bool = False):
        # A misaligned pair (without mlm_on_negatives) is corrupted like any other but carries no
        # labels: were it left clean, the presence of [MASK] alone would tell the alignment head
        # "aligned", and it would learn that instead of comparing the text with the video.
        labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
        label_ref = np.full(len(ids), -1, dtype=np.int64)
        chosen_text = text_pos[rng.random(len(text_pos)) < self.obj.text_mask_prob]
        chosen_video = video_pos[rng.random(len(video_pos)) < self.obj.video_mask_prob]
        if labelled:
            labels[chosen_text] = ids[chosen_text]
            label_ref[chosen_video] = video_ref[chosen_video]
        if whole_video:  # every visual position a target, all [MASK]: nothing of the video stays visible
            label_ref[video_pos] = video_ref[video_pos]
        self._corrupt(ids, video_ref, chosen_text, rng, self.random_text_ids)
        if whole_video:
            ids[video_pos], video_ref[video_pos] = self.vocab.mask_id, -1
        else:
            self._corrupt(ids, video_ref, chosen_video, rng, None)
        return labels, label_ref

    def _corrupt(self, ids, video_ref, positions, rng, random_pool) -> None:
        # BERT's replacement: 80 % [MASK], 10 % a random token of the same modality, 10 % unchanged.
        draw = rng.random(len(positions))
        to_mask = positions[draw < 0.8]
        to_random = positions[(draw >= 0.8) & (draw < 0.9)]
        ids[to_mask] = self.vocab.mask_id
        video_ref[to_mask] = -1
        if random_pool is not None:
            ids[to_random] = rng.choice(random_pool, size=len(to_random))
        else:
            ids[to_random] = self.vocab.visual_offset + rng.integers(0, self.vocab.num_visual_tokens, len(to_random))
            video_ref[to_random] = -1


def _donors(items: Sequence[TrainingItem], i: int) -> list[int]:
    """Items of the batch whose video may serve as item ``i``'s negative: those of other videos."""
    return [j for j, it in enumerate(items) if it.video_id != items[i].video_id]


def resolve_visual(batch: dict[str, Any], table_ids, vocab: JointVocab) -> dict[str, Any]:
    """Fill video positions from the clip table's visual-token ids (numpy or torch, in place).

    ``video_ref``/``label_ref`` >= 0 name a row of the table whose token goes to ``input_ids`` /
    ``mlm_labels`` at that position. The references are removed afterwards.
    """
    video_ref, label_ref = batch.pop("video_ref"), batch.pop("label_ref")
    for name, ref in (("input_ids", video_ref), ("mlm_labels", label_ref)):
        where = ref >= 0
        batch[name][where] = vocab.visual_offset + table_ids[ref[where]]
    return batch


def _clip_table(items: Sequence[TrainingItem]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(it.clips) for it in items], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    table = np.concatenate([it.clips for it in items])
    if table.ndim == 1:
        table = table.astype(np.int64)
    return table, offsets


def _pad(rows: list[dict[str, np.ndarray]], pad_id: int) -> dict[str, np.ndarray]:
    longest = max(len(r["input_ids"]) for r in rows)
    width = -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE
    fill = dict(input_ids=pad_id, token_type_ids=0, mlm_labels=IGNORE_INDEX, video_ref=-1, label_ref=-1)
    out = {name: np.full((len(rows), width), value, dtype=np.int64) for name, value in fill.items()}
    out["attention_mask"] = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        for name in fill:
            out[name][i, :n] = row[name]
        out["attention_mask"][i, :n] = 1
    return out


def _ordinary_token_ids(tokenizer: Any, text_vocab_size: int) -> np.ndarray:
    """Ids a random replacement may use: the text vocabulary minus bracketed special/unused tokens."""
    vocab = tokenizer.get_vocab()
    ids = [i for tok, i in vocab.items() if i < text_vocab_size and not (tok.startswith("[") and tok.endswith("]"))]
    return np.array(sorted(ids), dtype=np.int64)
