"""The example builder: sequences, truncation, masking, alignment negatives, clip references."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from videobert.models.vocab import IGNORE_INDEX, TEXT_TYPE, VIDEO_TYPE, JointVocab
from videobert.trainer.config import ObjectivesConfig
from videobert.trainer.example_builder import (
    ALIGNED, JOINT, MISALIGNED, TEXT_ONLY, VIDEO_ONLY, ExampleBuilder, TrainingItem, resolve_visual,
)

NUM_VISUAL = 40


@pytest.fixture(scope="module")
def tokenizer(minilm_tokenizer):
    return minilm_tokenizer


@pytest.fixture(scope="module")
def vocab(tokenizer):
    return JointVocab.from_tokenizer(tokenizer, NUM_VISUAL)


def _objectives(**kw):
    base = dict(joint_fraction=1.0, text_fraction=0.0, video_fraction=0.0, negative_rate=0.0,
                text_mask_prob=0.0, video_mask_prob=0.0, max_stride=1)
    return ObjectivesConfig(**{**base, **kw})


def _segments(n=6, clips=5):
    return [TrainingItem(key=f"v{i}-s0", video_id=f"v{i}", text=f"now we cut the tomato number {i}",
                    clips=np.arange(i * clips, (i + 1) * clips) % NUM_VISUAL) for i in range(n)]


def test_joint_sequence_layout(tokenizer, vocab):
    builder = ExampleBuilder(vocab, tokenizer, _objectives(), max_seq_len=64)
    items = _segments(2)
    batch = builder.build(items, np.random.default_rng(0))
    text = tokenizer(items[0].text, add_special_tokens=False)["input_ids"]
    row = batch["input_ids"][0][batch["attention_mask"][0] == 1]
    expected = [vocab.cls_id, *text, vocab.video_sep_id, *(vocab.visual_offset + items[0].clips), vocab.sep_id]
    assert row.tolist() == expected
    types = batch["token_type_ids"][0][: len(row)]
    assert types.tolist() == [TEXT_TYPE] * (1 + len(text)) + [VIDEO_TYPE] * (len(items[0].clips) + 2)
    assert batch["alignment_labels"].tolist() == [ALIGNED, ALIGNED]
    assert batch["input_ids"].shape[1] % 8 == 0
    assert (batch["mlm_labels"] == IGNORE_INDEX).all()


def test_truncation_keeps_both_modalities(tokenizer, vocab):
    builder = ExampleBuilder(vocab, tokenizer, _objectives(), max_seq_len=16)
    long = [TrainingItem(key="a", video_id="a", text="word " * 40, clips=np.arange(30) % NUM_VISUAL)]
    batch = builder.build(long, np.random.default_rng(0))
    assert batch["attention_mask"].sum() == 16
    ids = batch["input_ids"][0]
    assert (ids == vocab.video_sep_id).sum() == 1
    assert vocab.is_visual(ids).sum() == (16 - 3) // 2


def test_masking_rates_and_labels(tokenizer, vocab):
    builder = ExampleBuilder(vocab, tokenizer, _objectives(text_mask_prob=0.3, video_mask_prob=0.3), max_seq_len=128)
    unmasked = ExampleBuilder(vocab, tokenizer, _objectives(), max_seq_len=128)
    items = _segments(64, clips=12)
    batch = builder.build(items, np.random.default_rng(1))
    clean = unmasked.build(items, np.random.default_rng(1))
    labels, ids, original = batch["mlm_labels"], batch["input_ids"], clean["input_ids"]
    chosen = labels != IGNORE_INDEX
    assert (labels[chosen] == original[chosen]).all(), "labels are the original tokens"
    specials = np.isin(original, [vocab.cls_id, vocab.sep_id, vocab.video_sep_id, vocab.pad_id])
    assert not (chosen & specials).any(), "special tokens are never chosen"
    rate = chosen.sum() / (~specials & (batch["attention_mask"] == 1)).sum()
    assert 0.25 < rate < 0.35
    masked = (ids[chosen] == vocab.mask_id).mean()
    kept = (ids[chosen] == original[chosen]).mean()
    assert 0.72 < masked < 0.88 and 0.04 < kept < 0.17
    changed = chosen & (ids != original) & (ids != vocab.mask_id)
    assert (vocab.is_visual(ids[changed]) == vocab.is_visual(original[changed])).all(), "random replacements keep the modality"


def test_negatives_take_video_from_another_video(tokenizer, vocab):
    builder = ExampleBuilder(vocab, tokenizer, _objectives(negative_rate=1.0), max_seq_len=64)
    items = _segments(4)
    batch = builder.build(items, np.random.default_rng(2))
    assert batch["alignment_labels"].tolist() == [MISALIGNED] * 4
    for i, item in enumerate(items):
        video = batch["input_ids"][i][vocab.is_visual(batch["input_ids"][i])] - vocab.visual_offset
        assert not np.array_equal(video, item.clips)
        assert any(np.array_equal(video, other.clips) for other in items if other is not item)


def test_no_negative_without_another_video(tokenizer, vocab):
    builder = ExampleBuilder(vocab, tokenizer, _objectives(negative_rate=1.0), max_seq_len=64)
    same = [dataclasses.replace(s, video_id="one") for s in _segments(3)]
    assert builder.build(same, np.random.default_rng(0))["alignment_labels"].tolist() == [ALIGNED] * 3


def test_kinds_follow_their_shares(tokenizer, vocab):
    builder = ExampleBuilder(vocab, tokenizer, _objectives(joint_fraction=0.5, text_fraction=0.25, video_fraction=0.25), 64)
    batch = builder.build(_segments(400, clips=3), np.random.default_rng(3))
    shares = np.bincount(batch["kind"], minlength=3) / 400
    assert abs(shares[JOINT] - 0.5) < 0.08 and abs(shares[TEXT_ONLY] - 0.25) < 0.08
    text_only = batch["input_ids"][batch["kind"] == TEXT_ONLY]
    video_only = batch["input_ids"][batch["kind"] == VIDEO_ONLY]
    assert not vocab.is_visual(text_only).any()
    assert (batch["alignment_labels"][batch["kind"] != JOINT] == IGNORE_INDEX).all()
    assert (text_only == vocab.video_sep_id).sum() == 0 and (video_only == vocab.video_sep_id).sum() == 0


def test_stride_subsamples_video(tokenizer, vocab):
    builder = ExampleBuilder(vocab, tokenizer, _objectives(max_stride=5), max_seq_len=256)
    item = [TrainingItem(key="a", video_id="a", text="x", clips=np.arange(NUM_VISUAL))]
    lengths = {int(vocab.is_visual(builder.build(item, np.random.default_rng(s))["input_ids"]).sum()) for s in range(40)}
    assert {NUM_VISUAL} < lengths and min(lengths) == NUM_VISUAL // 5


def test_stride_never_leaves_fewer_than_the_minimum_tokens(tokenizer, vocab):
    builder = ExampleBuilder(vocab, tokenizer, _objectives(max_stride=5, stride_min_tokens=4), max_seq_len=256)
    for n, shortest in ((3, 3), (8, 4), (12, 4), (40, 8)):  # 3 clips: whole; 8: stride <= 2; 40: stride 5 allowed
        item = [TrainingItem(key="a", video_id="a", text="x", clips=np.arange(n))]
        lengths = {int(vocab.is_visual(builder.build(item, np.random.default_rng(s))["input_ids"]).sum()) for s in range(60)}
        assert min(lengths) == shortest and max(lengths) == n, (n, lengths)


def test_clip_references_resolve_to_the_token_path(tokenizer, vocab):
    """Frames take the same path as tokens: building with frames, then resolving the clip table with
    the clips' token ids, gives exactly the batch built from the tokens."""
    objectives = _objectives(text_mask_prob=0.3, video_mask_prob=0.3, negative_rate=0.5, max_stride=3)
    builder = ExampleBuilder(vocab, tokenizer, objectives, max_seq_len=48)
    items = _segments(8, clips=6)
    frames = [dataclasses.replace(s, clips=np.zeros((len(s.clips), 2, 4, 4, 3), np.uint8)) for s in items]
    from_tokens = builder.build(items, np.random.default_rng(9))
    from_frames = builder.build(frames, np.random.default_rng(9))
    table = np.concatenate([s.clips for s in items]).astype(np.int64)
    assert from_frames["clips"].shape[0] == len(table)
    resolve_visual(from_frames, table, vocab)
    for key in ("input_ids", "mlm_labels", "token_type_ids", "attention_mask", "alignment_labels"):
        np.testing.assert_array_equal(from_frames[key], from_tokens[key], err_msg=key)


def test_negatives_are_masked_like_positives_but_carry_no_labels(tokenizer, vocab):
    """Were misaligned pairs left clean, a [MASK] anywhere would tell the alignment head "aligned"."""
    builder = ExampleBuilder(vocab, tokenizer, _objectives(negative_rate=0.5, text_mask_prob=0.4, video_mask_prob=0.4), 64)
    batch = builder.build(_segments(200), np.random.default_rng(4))
    masked = (batch["input_ids"] == vocab.mask_id).any(axis=1)
    labelled = (batch["mlm_labels"] != IGNORE_INDEX).any(axis=1)
    negative = batch["alignment_labels"] == MISALIGNED
    assert 40 < negative.sum() < 160
    assert abs(masked[negative].mean() - masked[~negative].mean()) < 0.1 and masked[negative].mean() > 0.8
    assert not labelled[negative].any() and labelled[~negative].mean() > 0.8


def test_extra_negatives_keep_every_positive_and_its_targets(tokenizer, vocab):
    """negatives_per_positive=K: each joint item stays aligned with the targets it would have had
    without negatives, and K more rows pair its text with other videos, grouped with it."""
    items = _segments(10)
    masking = dict(text_mask_prob=0.3, video_mask_prob=0.3)
    plain = ExampleBuilder(vocab, tokenizer, _objectives(**masking), 64).build(items, np.random.default_rng(3))
    builder = ExampleBuilder(vocab, tokenizer, _objectives(negatives_per_positive=2, negative_rate=0.9, **masking), 64)
    batch = builder.build(items, np.random.default_rng(3))
    assert len(batch["input_ids"]) == 10 * 3
    labels, groups = batch["alignment_labels"], batch["alignment_groups"]
    assert labels[:10].tolist() == [ALIGNED] * 10 and labels[10:].tolist() == [MISALIGNED] * 20
    assert groups[:10].tolist() == list(range(10)) and sorted(groups[10:].tolist()) == sorted(list(range(10)) * 2)
    # every positive keeps MLM targets (the same number as the plain build's rows would draw on average)
    per_row = (batch["mlm_labels"][:10] != IGNORE_INDEX).sum(axis=1)
    assert (per_row > 0).all() and abs(per_row.sum() - (plain["mlm_labels"] != IGNORE_INDEX).sum()) < 20
    assert not (batch["mlm_labels"][10:] != IGNORE_INDEX).any()
    for row in range(10, 30):  # a negative carries its positive's text and another video's tokens
        i = groups[row]
        ids, mask = batch["input_ids"][row], batch["attention_mask"][row] == 1
        visual = ids[mask & (batch["token_type_ids"][row] == VIDEO_TYPE) & (ids >= vocab.visual_offset)] - vocab.visual_offset
        own = set(items[i].clips.tolist())
        assert len(visual) and not set(visual.tolist()) <= own


def test_listwise_loss_ranks_each_text_against_its_negatives():
    """The listwise loss by hand: two groups of three rows and one row outside any group."""
    import torch

    from videobert.models.videobert import _listwise_cross_entropy

    scores = torch.tensor([2.0, 0.5, -1.0, 0.0, 1.0, 3.0, 7.0])
    logits = torch.stack([scores, torch.zeros_like(scores)], dim=1).requires_grad_()
    labels = torch.tensor([ALIGNED, MISALIGNED, MISALIGNED, ALIGNED, MISALIGNED, MISALIGNED, IGNORE_INDEX])
    groups = torch.tensor([0, 0, 0, 3, 3, 3, -1])
    loss, correct, count = _listwise_cross_entropy(logits, labels, groups)
    first = -torch.log_softmax(scores[:3], 0)[0]
    second = -torch.log_softmax(scores[3:6], 0)[0]
    assert torch.isclose(loss, (first + second) / 2) and int(correct) == 1 and int(count) == 2
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[6].abs().sum() == 0  # an ungrouped row takes no part


def test_span_masking_hides_a_whole_video(tokenizer, vocab):
    """video_span_mask_prob: a chosen row has every visual position [MASK] and a target, and no
    alignment label; other rows mask as usual."""
    builder = ExampleBuilder(vocab, tokenizer, _objectives(video_span_mask_prob=0.5, video_mask_prob=0.15), 64)
    items = _segments(200)
    batch = builder.build(items, np.random.default_rng(5))
    video = (batch["token_type_ids"] == VIDEO_TYPE) & (batch["attention_mask"] == 1)
    video &= batch["input_ids"] != vocab.video_sep_id
    video &= batch["input_ids"] != vocab.sep_id
    spans = (batch["input_ids"] == vocab.mask_id).sum(axis=1) == video.sum(axis=1)
    assert 60 < spans.sum() < 140
    for row in np.flatnonzero(spans):
        at = video[row]
        expected = vocab.visual_offset + items[row].clips
        assert batch["mlm_labels"][row][at].tolist() == expected.tolist()
        assert batch["alignment_labels"][row] == IGNORE_INDEX
    assert (batch["alignment_labels"][~spans] == ALIGNED).all()


@pytest.mark.parametrize("k", [0, 2])
def test_the_heldout_pass_reads_alignment_on_intact_pairs(tokenizer, vocab, k):
    from videobert.trainer.evaluation.heldout import heldout_objectives, row_builders, segment_batches

    training = ObjectivesConfig(text_mask_prob=0.4, video_mask_prob=0.3, negatives_per_positive=k, negative_rate=0.2)
    builder = ExampleBuilder(vocab, tokenizer, heldout_objectives(training), max_seq_len=64)
    segments = _segments(n=6)
    batches = list(segment_batches(segments, row_builders(builder), batch_size=4, seed=3))
    assert len(batches) == 4  # (masked, intact) for segments 0-3, then for 4-5
    for masked, intact in (batches[0:2], batches[2:4]):
        n = len(masked["alignment_labels"])
        assert (masked["alignment_labels"] == IGNORE_INDEX).all() and (masked["alignment_groups"] == -1).all()
        assert (masked["mlm_labels"] != IGNORE_INDEX).sum() > 0 and (masked["input_ids"] == vocab.mask_id).any()
        assert not (intact["input_ids"] == vocab.mask_id).any() and (intact["mlm_labels"] == IGNORE_INDEX).all()
        labels = intact["alignment_labels"]
        assert (labels[:n] == ALIGNED).all() and (labels[n:] == MISALIGNED).all()
        assert len(labels) == n * (1 + max(1, k))  # every text with its own video and max(1, K) others
        video = intact["token_type_ids"] == VIDEO_TYPE
        own = [tuple(intact["input_ids"][i][video[i]][1:-1]) for i in range(n)]  # between [>] and [SEP]
        for row in range(n, len(labels)):
            text = intact["input_ids"][row][~video[row]]
            group = intact["alignment_groups"][row]
            assert tuple(text) == tuple(intact["input_ids"][group][~video[group]])  # the same intact text
            assert tuple(intact["input_ids"][row][video[row]][1:-1]) != own[group]  # another video
    again = list(segment_batches(segments, row_builders(builder), batch_size=4, seed=3))
    assert all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again))  # deterministic
