"""The supervised captioner of the paper's Table 3: a small transformer encoder-decoder over frozen features.

Its input is a few feature "slots" per segment, each a vector from one source (VideoBERT's mean
output at the video tokens, its mean output at the template's masks, the clip encoder's mean
feature; ``trainer.evaluation.captioning.features``). Each slot is standardised with the training set's mean and
spread, projected to the model width and tagged with its own slot embedding; the encoder attends
over the slots and the decoder writes the caption word by word. With no slot at all (the no-video
baseline) the encoder reads one learned vector: the decoder is then a language model of the
captions, and its best sentence is the same for every segment.

Words are the training captions' own (``CaptionWords``: lower case, punctuation dropped, the
tokenization of ``caption_metrics.plain_tokens``); the output layer shares the word embeddings.
Decoding is greedy or a beam search with length-normalised log-probabilities.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from videobert.trainer.evaluation.captioning.metrics import plain_tokens

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIAL_WORDS = ("<pad>", "<bos>", "<eos>", "<unk>")


@dataclass(frozen=True)
class CaptionWords:
    """The captioner's word list: the specials, then the training captions' words by frequency."""

    words: tuple[str, ...]

    @classmethod
    def from_captions(cls, captions: Sequence[str], min_count: int = 1) -> "CaptionWords":
        counts = Counter(w for c in captions for w in plain_tokens(c))
        kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(SPECIAL_WORDS + tuple(kept))

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ids", {w: i for i, w in enumerate(self.words)})

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, sentence: str, max_words: int) -> list[int]:
        """``<bos>`` + at most ``max_words`` word ids + ``<eos>``."""
        ids = [self._ids.get(w, UNK) for w in plain_tokens(sentence)[:max_words]]
        return [BOS, *ids, EOS]

    def decode(self, ids: Sequence[int]) -> str:
        """Words up to the first ``<eos>``, specials dropped."""
        out = []
        for i in ids:
            if i == EOS:
                break
            if i >= len(SPECIAL_WORDS):
                out.append(self.words[i])
        return " ".join(out)


class Captioner(nn.Module):
    """Feature slots -> caption words (see module doc). ``slot_dims``: the width of each slot."""

    def __init__(self, slot_dims: Sequence[int], vocab_size: int, *, width: int = 128, heads: int = 4,
                 encoder_layers: int = 2, decoder_layers: int = 2, ffn: int = 256, dropout: float = 0.1,
                 max_words: int = 24):
        super().__init__()
        self.slot_dims = tuple(int(d) for d in slot_dims)
        self.arguments = {"slot_dims": list(self.slot_dims), "vocab_size": vocab_size, "width": width, "heads": heads,
                          "encoder_layers": encoder_layers, "decoder_layers": decoder_layers, "ffn": ffn,
                          "dropout": dropout, "max_words": max_words}
        """What rebuilds this module: ``Captioner(**arguments)``."""
        self.max_words = max_words
        n = max(1, len(self.slot_dims))
        self.register_buffer("slot_mean", torch.zeros(sum(self.slot_dims)))
        self.register_buffer("slot_scale", torch.ones(sum(self.slot_dims)))
        self.projections = nn.ModuleList(nn.Linear(d, width) for d in self.slot_dims)
        self.constant_memory = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.slot_embedding = nn.Parameter(torch.randn(1, n, width) * 0.02)
        self.memory_norm = nn.LayerNorm(width)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(
            width, heads, ffn, dropout, batch_first=True, norm_first=True), encoder_layers, enable_nested_tensor=False)
        self.words = nn.Embedding(vocab_size, width, padding_idx=PAD)
        self.positions = nn.Embedding(max_words + 2, width)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(
            width, heads, ffn, dropout, batch_first=True, norm_first=True), decoder_layers)
        self.out_norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)

    def set_standardisation(self, features: torch.Tensor) -> None:
        """Standardise inputs with the mean and spread of the training features (N, sum(slot_dims))."""
        if self.slot_dims:
            self.slot_mean.copy_(features.mean(dim=0))
            self.slot_scale.copy_(features.std(dim=0).clamp(min=1e-4))

    def memory(self, features: torch.Tensor) -> torch.Tensor:
        """(B, sum(slot_dims)) -> (B, slots, width)."""
        batch = features.shape[0]
        if not self.slot_dims:
            slots = self.constant_memory.expand(batch, 1, -1)
        else:
            x = (features - self.slot_mean) / self.slot_scale
            parts = torch.split(x, self.slot_dims, dim=1)
            slots = torch.stack([p(part) for p, part in zip(self.projections, parts)], dim=1)
        return self.encoder(self.dropout(self.memory_norm(slots + self.slot_embedding)))

    def logits(self, memory: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """(B, S, width), (B, T) word ids -> (B, T, vocab) next-word logits."""
        t = words.shape[1]
        x = self.words(words) + self.positions(torch.arange(t, device=words.device))
        causal = torch.ones(t, t, dtype=torch.bool, device=words.device).triu(diagonal=1)  # True: not seen
        hidden = self.decoder(self.dropout(x), memory, tgt_mask=causal, tgt_key_padding_mask=words == PAD)
        return self.out_norm(hidden) @ self.words.weight.T

    def forward(self, features: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        return self.logits(self.memory(features), words)


def caption_loss(model: Captioner, features: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """Teacher-forced cross-entropy of (B, T) ``<bos> words <eos>`` padded with ``<pad>``."""
    logits = model(features, targets[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[:, 1:].reshape(-1),
                                       ignore_index=PAD, label_smoothing=smoothing)


@torch.no_grad()
def greedy_decode(model: Captioner, features: torch.Tensor) -> list[list[int]]:
    """The most likely next word at every step, for a batch (B, sum(slot_dims))."""
    memory = model.memory(features)
    words = torch.full((features.shape[0], 1), BOS, dtype=torch.long, device=features.device)
    done = torch.zeros(features.shape[0], dtype=torch.bool, device=features.device)
    for _ in range(model.max_words + 1):
        step = model.logits(memory, words)[:, -1]
        step[:, PAD] = step[:, BOS] = -float("inf")
        nxt = torch.where(done, torch.full_like(done, PAD, dtype=torch.long), step.argmax(dim=-1))
        words = torch.cat([words, nxt[:, None]], dim=1)
        done |= nxt == EOS
        if bool(done.all()):
            break
    return [row[1:].tolist() for row in words]


@torch.no_grad()
def beam_decode(model: Captioner, features: torch.Tensor, beam: int = 3, length_penalty: float = 1.0) -> list[list[int]]:
    """Beam search for each segment of a batch; hypotheses ranked by log-probability / length **
    ``length_penalty``. Every segment keeps its own ``beam`` hypotheses and stops on its own (when
    ``beam`` have ended and the best of them beats every live one); one decoder pass per step reads the
    live hypotheses of all the segments still searching, so a segment's caption is the one it gets
    decoded alone."""
    memory = model.memory(features)
    n = features.shape[0]
    alive: list[list[tuple[list[int], float]]] = [[([BOS], 0.0)] for _ in range(n)]
    finished: list[list[tuple[list[int], float]]] = [[] for _ in range(n)]
    searching = list(range(n))
    for _ in range(model.max_words + 1):
        if not searching:
            break
        hyps = [(i, h) for i in searching for h in alive[i]]
        owners = torch.tensor([i for i, _ in hyps], device=memory.device)
        words = torch.tensor([w for _, (w, _) in hyps], device=memory.device)
        step = torch.log_softmax(model.logits(memory[owners], words)[:, -1].float(), dim=-1)
        step[:, PAD] = step[:, BOS] = -float("inf")
        scores = torch.tensor([s for _, (_, s) in hyps], device=memory.device)[:, None] + step  # (hyps, vocab)
        still, first = [], 0
        for i in searching:
            block = scores[first : first + len(alive[i])]
            first += len(alive[i])
            top = torch.topk(block.flatten(), min(2 * beam, block.numel()))
            candidates = []
            for value, flat in zip(top.values.tolist(), top.indices.tolist()):
                row, word = divmod(flat, block.shape[1])
                seq = alive[i][row][0] + [word]
                (finished[i] if word == EOS else candidates).append((seq, value))
            alive[i] = candidates[:beam]
            done = not alive[i] or (len(finished[i]) >= beam
                                    and _best(finished[i], length_penalty)[1] >= _normalised(alive[i][0], length_penalty))
            if not done:
                still.append(i)
        searching = still
    return [_best(finished[i] or alive[i], length_penalty)[0][1:] for i in range(n)]


def _normalised(hyp: tuple[list[int], float], length_penalty: float) -> float:
    return hyp[1] / (len(hyp[0]) - 1) ** length_penalty


def _best(hyps: list[tuple[list[int], float]], length_penalty: float) -> tuple[list[int], float]:
    best = max(hyps, key=lambda h: _normalised(h, length_penalty))
    return best[0], _normalised(best, length_penalty)
