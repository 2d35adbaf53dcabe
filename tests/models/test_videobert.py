"""VideoBertForPreTraining: gathered heads, the three losses, metric counts, graph participation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from videobert.models.config import preset
from videobert.models.videobert import PreTrainingOutput, VideoBertForPreTraining
from videobert.models.vocab import IGNORE_INDEX


@pytest.fixture(scope="module")
def model(small_vocab) -> VideoBertForPreTraining:
    torch.manual_seed(0)
    config = preset("tiny", small_vocab, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                    text_mlm_weight=0.7, video_mlm_weight=1.3, alignment_weight=0.4)
    return VideoBertForPreTraining(config).eval()


def _mask_labels(vocab, input_ids: torch.Tensor, fraction: float = 0.3, seed: int = 1):
    """Label ~fraction of the positions with their token (text and visual alike), then mask them."""
    g = torch.Generator().manual_seed(seed)
    chosen = torch.rand(input_ids.shape, generator=g) < fraction
    chosen[:, 0] = False
    chosen[0, 1] = chosen[0, -2] = True  # at least one text and one visual target
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return torch.where(chosen, torch.full_like(input_ids, vocab.mask_id), input_ids), labels


def test_gathered_head_equals_the_full_head_at_masked_positions(model, small_vocab, make_joint_batch):
    ids, types, mask = make_joint_batch(small_vocab)
    ids, labels = _mask_labels(small_vocab, ids)
    with torch.no_grad():
        hidden = model.encode(ids, types, mask)
        full = model.mlm_logits(hidden.reshape(-1, hidden.shape[-1])).view(*ids.shape, -1)  # every position
        at = labels != IGNORE_INDEX
        gathered = model.mlm_logits(hidden[at])
    assert gathered.shape == (int(at.sum()), small_vocab.size_padded)
    torch.testing.assert_close(gathered, full[at], rtol=0, atol=1e-6)


@pytest.mark.parametrize("candidates", ["modality", "joint"])
def test_losses_counts_and_accuracies_match_a_hand_computation(small_vocab, make_joint_batch, candidates):
    torch.manual_seed(0)
    model = VideoBertForPreTraining(preset(
        "tiny", small_vocab, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, text_mlm_weight=0.7,
        video_mlm_weight=1.3, alignment_weight=0.4, mlm_candidates=candidates)).eval()
    ids, types, mask = make_joint_batch(small_vocab, batch=4)
    ids, labels = _mask_labels(small_vocab, ids)
    alignment = torch.tensor([0, 1, IGNORE_INDEX, 1])
    with torch.no_grad():
        out = model(ids, types, mask, labels, alignment)
        hidden = model.encode(ids, types, mask)
        logits = model.mlm_logits(hidden[labels != IGNORE_INDEX])
        align_logits = model.alignment_logits(hidden)
    targets = labels[labels != IGNORE_INDEX]
    video = (targets >= small_vocab.visual_offset) & (targets < small_vocab.size)  # by the layout, not is_visual
    assert int(out.video_mlm_count) == int(video.sum()) > 0 and int(out.text_mlm_count) == int((~video).sum()) > 0
    text_logits, text_targets = logits[~video], targets[~video]
    video_logits, video_targets = logits[video], targets[video]
    if candidates == "modality":  # each modality among its own rows of the table
        text_logits = text_logits[:, : small_vocab.visual_offset]
        video_logits = video_logits[:, small_vocab.visual_offset : small_vocab.size]
        video_targets = video_targets - small_vocab.visual_offset
    torch.testing.assert_close(out.text_mlm_loss, F.cross_entropy(text_logits, text_targets))
    torch.testing.assert_close(out.video_mlm_loss, F.cross_entropy(video_logits, video_targets))
    assert int(out.text_mlm_correct) == int((text_logits.argmax(-1) == text_targets).sum())
    assert int(out.video_mlm_correct) == int((video_logits.argmax(-1) == video_targets).sum())
    keep = alignment != IGNORE_INDEX
    torch.testing.assert_close(out.alignment_loss, F.cross_entropy(align_logits[keep], alignment[keep]))
    assert int(out.alignment_count) == 3
    assert int(out.alignment_correct) == int((align_logits[keep].argmax(-1) == alignment[keep]).sum())
    torch.testing.assert_close(out.alignment_logits, align_logits)
    expected = 0.7 * out.text_mlm_loss + 1.3 * out.video_mlm_loss + 0.4 * out.alignment_loss
    torch.testing.assert_close(out.loss, expected)


def test_text_targets_leave_the_visual_rows_alone_unless_the_softmax_is_joint(small_vocab, make_joint_batch):
    """With ``mlm_candidates=modality`` a text target's loss gives the visual words' rows of the tied
    table no gradient (with ``joint`` it pushes every one of them)."""
    ids, types, mask = make_joint_batch(small_vocab, batch=4)
    ids, labels = _mask_labels(small_vocab, ids)
    text_only = torch.where((labels >= small_vocab.visual_offset), torch.full_like(labels, IGNORE_INDEX), labels)
    visual = slice(small_vocab.visual_offset, small_vocab.size)
    for candidates, moved in (("modality", False), ("joint", True)):
        torch.manual_seed(0)
        model = VideoBertForPreTraining(preset("tiny", small_vocab, mlm_candidates=candidates, video_mlm_weight=0.0,
                                               alignment_weight=0.0))
        # only text in the input too, so that nothing reaches the visual rows through the embeddings
        text_ids = torch.where(ids >= small_vocab.visual_offset, torch.full_like(ids, small_vocab.mask_id), ids)
        model(text_ids, types, mask, text_only).loss.backward()
        grad = model.embeddings.word.weight.grad[visual]
        assert bool(grad.abs().sum() > 0) == moved, candidates


@pytest.mark.parametrize("candidates", ["modality", "joint"])
def test_accuracy_counts_a_model_that_is_right(small_vocab, make_joint_batch, candidates):
    """Make the head predict the label: the decoder bias puts a huge prior on one text and one visual id."""
    torch.manual_seed(0)
    model = VideoBertForPreTraining(preset("tiny", small_vocab, mlm_candidates=candidates)).eval()
    ids, types, mask = make_joint_batch(small_vocab, batch=2)
    text_id, visual_id = 7, small_vocab.visual_offset + 3
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, 1], labels[:, 2], labels[:, -2] = text_id, 8, visual_id  # column 2 is a wrong-answer target
    with torch.no_grad():
        model.mlm_head.decoder.bias[text_id] = 1e4
        model.mlm_head.decoder.bias[visual_id] = 1e3
        out = model(ids, types, mask, labels, None)
    assert (int(out.text_mlm_correct), int(out.text_mlm_count)) == (2, 4)
    # jointly, the text id wins everywhere; among the visual words only, the visual id wins at video targets
    assert (int(out.video_mlm_correct), int(out.video_mlm_count)) == ((0, 2) if candidates == "joint" else (2, 2))


def _every_parameter_gets_a_gradient(model: VideoBertForPreTraining, out: PreTrainingOutput) -> None:
    model.zero_grad(set_to_none=True)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters outside the graph: {missing}"


@pytest.mark.parametrize("kind", ["text-only", "video-only", "no targets"])
def test_objectives_without_targets_are_zero_and_stay_in_the_graph(small_vocab, make_joint_batch, kind):
    torch.manual_seed(0)
    model = VideoBertForPreTraining(preset("tiny", small_vocab)).train()
    ids, types, mask = make_joint_batch(small_vocab, batch=2)
    labels = torch.full_like(ids, IGNORE_INDEX)
    if kind == "text-only":
        labels[:, 2] = ids[:, 2]
    elif kind == "video-only":
        labels[:, -3] = ids[:, -3]
    out = model(ids, types, mask, None if kind == "no targets" else labels, None)
    absent = {"text-only": ["video_mlm", "alignment"], "video-only": ["text_mlm", "alignment"],
              "no targets": ["text_mlm", "video_mlm", "alignment"]}[kind]
    for name in absent:
        assert float(getattr(out, f"{name}_loss").detach()) == 0.0 and int(getattr(out, f"{name}_count")) == 0
    assert torch.isfinite(out.loss)
    _every_parameter_gets_a_gradient(model, out)


def test_counts_are_tensors_that_sum_across_steps(model, small_vocab, make_joint_batch):
    ids, types, mask = make_joint_batch(small_vocab)
    ids, labels = _mask_labels(small_vocab, ids)
    with torch.no_grad():
        out = model(ids, types, mask, labels, torch.tensor([0, 1, 0]))
    for name in ("text_mlm", "video_mlm", "alignment"):
        correct, count = getattr(out, f"{name}_correct"), getattr(out, f"{name}_count")
        assert isinstance(correct, torch.Tensor) and correct.dtype == torch.int64 and correct.dim() == 0
        assert isinstance(count, torch.Tensor) and count.dtype == torch.int64 and 0 <= int(correct) <= int(count)


def test_the_pair_head_adds_a_bilinear_score_of_the_modality_means(small_vocab, make_joint_batch):
    torch.manual_seed(0)
    config = preset("tiny", small_vocab, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, alignment_head="pair")
    model = VideoBertForPreTraining(config).eval()
    assert torch.count_nonzero(model.alignment_head.pair) == 0  # starts as the [CLS] head alone
    ids, types, mask = make_joint_batch(small_vocab, batch=3)
    with torch.no_grad():
        hidden = model.encode(ids, types, mask)
        cls_only = model.alignment_head.classifier(torch.tanh(model.alignment_head.pooler(hidden[:, 0])))
        torch.testing.assert_close(model.alignment_logits(hidden, types, mask), cls_only)
        model.alignment_head.pair.normal_()
        logits = model.alignment_logits(hidden, types, mask)
    size = hidden.shape[-1]
    for row in range(3):  # by hand: [CLS] left out of the text, every type-1 position in the video
        text = hidden[row][(types[row] == 0) & (torch.arange(ids.shape[1]) > 0)].mean(0)
        video = hidden[row][types[row] == 1].mean(0)
        text, video = F.layer_norm(text, (size,)), F.layer_norm(video, (size,))
        score = text @ model.alignment_head.pair @ video / size**0.5
        torch.testing.assert_close(logits[row], cls_only[row] + torch.stack([score, torch.zeros(())]))
    # padding changes nothing; a text-only row gets no pair term
    padded = [torch.cat([t, torch.full((3, 4), fill)], dim=1) for t, fill in ((ids, small_vocab.pad_id), (types, 0), (mask, 0))]
    with torch.no_grad():
        torch.testing.assert_close(model(padded[0], padded[1], padded[2]).alignment_logits, logits, rtol=0, atol=1e-5)
        text_only = torch.zeros_like(types)
        hidden = model.encode(ids, text_only, mask)
        cls_text_only = model.alignment_head.classifier(torch.tanh(model.alignment_head.pooler(hidden[:, 0])))
        torch.testing.assert_close(model.alignment_logits(hidden, text_only, mask), cls_text_only)
    # from zero, the alignment loss moves the matrix at once
    model.alignment_head.pair.data.zero_()
    model(ids, types, mask, alignment_labels=torch.tensor([0, 1, 0])).loss.backward()
    assert model.alignment_head.pair.grad.abs().sum() > 0


def test_an_unknown_alignment_head_is_refused(small_vocab):
    with pytest.raises(ValueError, match="alignment_head 'mean': use one of cls, pair"):
        preset("tiny", small_vocab, alignment_head="mean")
