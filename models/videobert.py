"""VideoBERT for pretraining: the joint transformer with its masked-token and alignment heads.

One BERT reads ``[CLS] text [>] video [SEP]`` (or text-only / video-only sequences) and learns three
objectives at once: masked text tokens, masked visual tokens (one tied MLM head over the joint
vocabulary) and whether the text and the video are aligned (a 2-way classifier on ``[CLS]``, laid
out like BERT's next-sentence head: class 0 = aligned, BERT's "is next"; 1 = misaligned).

The MLM head runs only at masked positions: the joint vocabulary has about 51K rows and most
positions carry no label, so the hidden states are gathered first. Every head takes part in every
step's graph, with zero weight when a micro-batch has no target for it, so that every parameter
receives a gradient on every rank (ZeRO-3 reduces gradients parameter by parameter).

Every parameter has a place in transformers' ``BertForPreTraining`` (q/k/v are one matrix here,
three there): ``hf_interop.bert_key_table`` holds the correspondence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from videobert.models.config import VideoBertConfig
from videobert.models.kernels import get_ops
from videobert.models.transformer import ATTENTION_MODES, BiasGeluLinear, Embeddings, Encoder, NormalLinear, use_kernels
from videobert.models.vocab import IGNORE_INDEX, TEXT_TYPE, VIDEO_TYPE

OBJECTIVES = ("text_mlm", "video_mlm", "alignment")
"""The three pretraining objectives; ``PreTrainingOutput`` holds ``{name}_loss``, ``{name}_correct``
and ``{name}_count`` for each."""

MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "mlm_labels", "alignment_labels", "alignment_groups")
"""The tensors ``VideoBertForPreTraining.forward`` takes, by name."""


class PreTrainingOutput(dict):
    """Losses and metric counts of one forward pass (all tensors; accuracy = correct / count).

    Fields read as attributes (``out.loss``). It is a dict underneath because DeepSpeed ZeRO-3 looks
    for the tensors a module returns in tuples, lists and dicts only, to hook its backward pass.
    """

    def __getattr__(self, name: str) -> torch.Tensor:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    loss: torch.Tensor
    """The configured weighted sum of the three losses."""
    text_mlm_loss: torch.Tensor
    """Mean cross-entropy over masked text positions (0 when there are none)."""
    video_mlm_loss: torch.Tensor
    """Mean cross-entropy over masked visual positions (0 when there are none)."""
    alignment_loss: torch.Tensor
    """Mean cross-entropy over examples with an alignment label (0 when there are none)."""
    text_mlm_correct: torch.Tensor
    text_mlm_count: torch.Tensor
    video_mlm_correct: torch.Tensor
    video_mlm_count: torch.Tensor
    alignment_correct: torch.Tensor
    alignment_count: torch.Tensor
    alignment_logits: torch.Tensor
    """(B, 2): aligned, misaligned."""


class TiedDecoder(nn.Module):
    """The MLM output layer: the word table (shared with the embeddings) as weight, plus a bias.

    The shared parameter is registered here too (as BERT does), so that the module whose forward
    uses it owns it; sharded training gathers a parameter around its owner's forward.
    """

    def __init__(self, word_weight: nn.Parameter, config: VideoBertConfig) -> None:
        super().__init__()
        self.weight = word_weight
        self.bias = nn.Parameter(torch.zeros(config.vocab.size_padded))
        self.ops = get_ops("reference")  # until VideoBertForPreTraining.set_kernels swaps in another set

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor | None = None, rows: slice | None = None):
        """(N, H) -> logits (N, V); with labels (N,): (mean loss, correct count) without keeping logits.
        ``rows``: score only these rows of the table (labels then count from its start)."""
        weight, bias = (self.weight, self.bias) if rows is None else (self.weight[rows], self.bias[rows])
        if labels is None:
            return F.linear(hidden, weight, bias)
        return self.ops.linear_cross_entropy(hidden, weight, bias, labels, return_correct=True)


class MlmHead(nn.Module):
    """BERT's masked-token head: dense, GELU, LayerNorm, then the tied decoder."""

    def __init__(self, config: VideoBertConfig, word_weight: nn.Parameter) -> None:
        super().__init__()
        h = config.hidden_size
        self.dense = BiasGeluLinear(h, h, std=config.initializer_range, ops=get_ops("reference"))
        self.norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.decoder = TiedDecoder(word_weight, config)

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor | None = None, rows: slice | None = None):
        return self.decoder(self.norm(self.dense(hidden)), labels, rows)


class AlignmentHead(nn.Module):
    """BERT's pooler (dense + tanh on [CLS]) and next-sentence classifier, reused for alignment; with
    ``alignment_head="pair"`` also a bilinear term over the two modalities' mean states
    (``VideoBertConfig.alignment_head``)."""

    def __init__(self, config: VideoBertConfig) -> None:
        super().__init__()
        h, std = config.hidden_size, config.initializer_range
        self.pooler = NormalLinear(h, h, std=std)
        self.classifier = NormalLinear(h, 2, std=std)
        self.pair: nn.Parameter | None = None
        if config.alignment_head == "pair":
            self.pair = nn.Parameter(torch.zeros(h, h))

    def reset_parameters(self) -> None:
        if self.pair is not None:
            nn.init.zeros_(self.pair)

    def forward(self, hidden: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        pooled = torch.tanh(self.pooler(hidden[:, 0]))  # (B, H)
        logits = self.classifier(pooled)  # (B, 2)
        if self.pair is None:
            return logits
        text, video = modality_means(hidden, token_type_ids, attention_mask)
        size = hidden.shape[-1]
        text, video = F.layer_norm(text, (size,)), F.layer_norm(video, (size,))
        score = torch.einsum("bi,ij,bj->b", text, self.pair.to(text.dtype), video) / size**0.5
        return logits + torch.stack([score, torch.zeros_like(score)], dim=-1).to(logits.dtype)


def modality_means(hidden: torch.Tensor, token_type_ids: torch.Tensor | None,
                   attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H) mean states of each row's text positions (token type 0, [CLS] left out) and of its
    video positions (token type 1), padding left out; 0 where a row has none."""
    batch, length = hidden.shape[:2]
    if token_type_ids is None:
        token_type_ids = torch.zeros((batch, length), dtype=torch.long, device=hidden.device)
    real = torch.ones_like(token_type_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    after_cls = torch.arange(length, device=hidden.device) > 0
    means = []
    for chosen in (real & (token_type_ids == TEXT_TYPE) & after_cls, real & (token_type_ids == VIDEO_TYPE)):
        weight = chosen.unsqueeze(-1).to(hidden.dtype)
        means.append((hidden * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1))
    return means[0], means[1]


def _listwise_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax over the rows of each group, scored by aligned minus misaligned logit, target the
    group's aligned row: mean loss over groups holding an aligned row and at least one other, the
    number of those groups whose aligned row scores highest, and the number of groups."""
    rows = logits.shape[0]
    member = (labels != IGNORE_INDEX) & (groups >= 0)
    group = torch.where(member, groups, torch.zeros_like(groups)).clamp(max=rows - 1)
    score = (logits[:, 0] - logits[:, 1]).float()
    low = torch.finfo(score.dtype).min
    masked = torch.where(member, score, torch.full_like(score, low))
    top = torch.full((rows,), low, dtype=score.dtype, device=score.device).scatter_reduce(
        0, group, masked, reduce="amax", include_self=True).detach()
    # exp of 0 off the groups: an unselected inf would still turn the backward pass into NaN
    exp = torch.where(member, torch.exp(torch.where(member, score - top[group], torch.zeros_like(score))),
                      torch.zeros_like(score))
    total = torch.zeros_like(top).scatter_add(0, group, exp)
    aligned = member & (labels == 0)
    own = torch.zeros_like(top).scatter_add(0, group, torch.where(aligned, score, torch.zeros_like(score)))
    size = torch.zeros_like(top).scatter_add(0, group, member.to(score.dtype))
    has_aligned = torch.zeros_like(top).scatter_add(0, group, aligned.to(score.dtype)) > 0
    scored = has_aligned & (size > 1)
    losses = torch.log(total.clamp(min=torch.finfo(score.dtype).tiny)) + top - own
    count = scored.sum()
    loss = torch.where(scored, losses, torch.zeros_like(losses)).sum() / count.clamp(min=1)
    loss = loss + 0.0 * score.sum()  # in the graph when no group is scored
    with torch.no_grad():
        correct = (scored & (own >= top)).sum()
    return loss, correct, count


def _mean_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over non-ignored labels (0, still in the graph, when there are none) and the correct count."""
    valid = labels != IGNORE_INDEX
    total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    with torch.no_grad():
        correct = ((logits.argmax(dim=-1) == labels) & valid).sum()
    return total / valid.sum().clamp(min=1), correct


class VideoBertForPreTraining(nn.Module):
    """The joint transformer with its three pretraining objectives. Build it from a ``VideoBertConfig``.

    To build without memory and materialise later::

        with torch.device("meta"):
            model = VideoBertForPreTraining(config)
        model.to_empty(device="cuda"); model.reset_parameters()

    The fusable operations start on the ``reference`` kernel set and attention on ``auto``; both
    are run-time choices (``set_kernels``, ``set_attention``) outside the config, because they
    change how the same function is computed, not which function: a model trained with ``triton``
    on a GPU evaluates with ``reference`` on a CPU.
    """

    def __init__(self, config: VideoBertConfig) -> None:
        super().__init__()
        self.config = config
        self.vocab = config.vocab
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.mlm_head = MlmHead(config, self.embeddings.word.weight)
        self.alignment_head = AlignmentHead(config)
        self.new_parameter_names: tuple[str, ...] = ()
        """Parameters that a pretrained checkpoint did not provide, or provided but never trained (set
        by ``from_pretrained_bert``); the trainer may give them a larger learning rate."""
        self.kernels = "reference"
        """Name of the kernel set the fusable operations run on (``set_kernels``)."""

    def set_kernels(self, name: str) -> None:
        """Run the fusable operations on the kernel set ``name`` (``models.kernels.KERNEL_SETS``)."""
        use_kernels(self, get_ops(name))
        self.kernels = name

    def set_attention(self, mode: str) -> None:
        """How attention sees padded batches: one of ``transformer.ATTENTION_MODES``."""
        if mode not in ATTENTION_MODES:
            raise ValueError(f"unknown attention mode {mode!r}; choose one of {list(ATTENTION_MODES)}")
        self.encoder.attention = mode

    def tie_weights(self) -> None:
        """Point the MLM decoder at the word table again (after ``to_empty`` or loading replaced it)."""
        self.mlm_head.decoder.weight = self.embeddings.word.weight

    def reset_parameters(self) -> None:
        """Re-initialise every weight as the constructors do (e.g. after ``to_empty``), and re-tie."""
        self.tie_weights()
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        nn.init.zeros_(self.mlm_head.decoder.bias)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Switch per-layer activation recomputation on or off (the config sets the initial state)."""
        self.encoder.gradient_checkpointing = bool(enabled)

    def encode(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states (B, T, H). ``attention_mask`` (B, T): 1/True at real tokens (None: all real);
        ``token_type_ids`` default to 0 (text)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings "
                f"({self.config.max_position_embeddings}): truncate the batch or raise the config"
            )
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        hidden = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        return self.encoder(hidden, attention_mask)

    def mlm_logits(self, hidden_at_positions: torch.Tensor) -> torch.Tensor:
        """(N, H) hidden states at the positions to predict -> (N, vocab.size_padded) logits."""
        return self.mlm_head(hidden_at_positions)

    def alignment_logits(self, hidden: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                         attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, H) -> (B, 2) logits: class 0 aligned, 1 misaligned. The ``pair`` head also reads
        which positions are text and video (the inputs ``encode`` took)."""
        return self.alignment_head(hidden, token_type_ids, attention_mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        alignment_labels: torch.Tensor | None = None,
        alignment_groups: torch.Tensor | None = None,
    ) -> PreTrainingOutput:
        """Losses of one batch.

        ``mlm_labels`` (B, T): joint ids at masked positions, ``IGNORE_INDEX`` elsewhere (None: no
        MLM target); a label is a video label when ``vocab.is_visual(label)``, otherwise text.
        ``alignment_labels`` (B,): 0 aligned, 1 misaligned, ``IGNORE_INDEX`` for examples without an
        alignment target (None: none has one). ``alignment_groups`` (B,): the text each row belongs
        to (rows of one text share a value, -1 for none), read by the ``listwise`` alignment loss,
        which then reports ranked-first groups as ``alignment_correct`` out of ``alignment_count``.
        """
        hidden = self.encode(input_ids, token_type_ids, attention_mask)
        if mlm_labels is None:
            mlm_labels = torch.full_like(input_ids, IGNORE_INDEX)
        if alignment_labels is None:
            alignment_labels = torch.full_like(input_ids[:, 0], IGNORE_INDEX)
        video_at = self.vocab.is_visual(mlm_labels)  # (B, T)
        text_at = (mlm_labels != IGNORE_INDEX) & ~video_at
        text_rows, video_rows, shift = None, None, 0
        if self.config.mlm_candidates == "modality":  # each position over the words of its own modality
            text_rows, video_rows = slice(0, self.vocab.visual_offset), slice(self.vocab.visual_offset, self.vocab.size)
            shift = self.vocab.visual_offset
        text_loss, text_correct = self.mlm_head(hidden[text_at], mlm_labels[text_at], text_rows)  # gathered (N_text, H)
        video_loss, video_correct = self.mlm_head(hidden[video_at], mlm_labels[video_at] - shift, video_rows)
        align_logits = self.alignment_head(hidden, token_type_ids, attention_mask)
        cfg = self.config
        if cfg.alignment_loss == "listwise" and alignment_groups is not None:
            align_loss, align_correct, align_count = _listwise_cross_entropy(align_logits, alignment_labels, alignment_groups)
        else:
            align_loss, align_correct = _mean_cross_entropy(align_logits, alignment_labels)
            align_count = (alignment_labels != IGNORE_INDEX).sum()
        loss = cfg.text_mlm_weight * text_loss + cfg.video_mlm_weight * video_loss + cfg.alignment_weight * align_loss
        return PreTrainingOutput(
            loss=loss,
            text_mlm_loss=text_loss,
            video_mlm_loss=video_loss,
            alignment_loss=align_loss,
            text_mlm_correct=text_correct,
            text_mlm_count=text_at.sum(),
            video_mlm_correct=video_correct,
            video_mlm_count=video_at.sum(),
            alignment_correct=align_correct,
            alignment_count=align_count,
            alignment_logits=align_logits,
        )
