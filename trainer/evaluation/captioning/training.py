"""Training one captioner row: deterministic batches, checkpoints that resume exactly, TensorBoard.

A row may train several captioners alike (``CaptionConfig.captioners``), told apart by their
``member`` index: each starts from its own initialisation and draws its own batches. Every step's
batch and dropout draw follow from (seed, row, member, step) alone, so a run resumed from its newest
complete checkpoint takes the same steps the uninterrupted run would have taken. A checkpoint
is ``rows/ROW/captioner-K/checkpoints/step-N/`` (``trainer.run_folder.CaptionFolder``) holding the weights
(safetensors), the optimizer state (tensors only, read with ``weights_only=True``), the captioner's
state (its arguments, words, step and the settings it was trained with) and, written last, the
``COMPLETE`` marker; only the newest complete one is kept. A checkpoint made with other settings
(other features, words or hyper-parameters) is refused rather than resumed.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from videobert.models.errors import VideoBertError
from videobert.trainer.data import positional_rng
from videobert.trainer.evaluation.captioning.captioner import PAD, Captioner, CaptionWords, caption_loss
from videobert.trainer.run_folder import (
    CAPTIONER_STATE, CAPTIONER_WEIGHTS, OPTIMIZER_STATE, CheckpointFolder, latest_complete, step_dirs, write_json,
)

_CAPTION_BATCHES = 23
"""Purpose part of the seed of the captioner's batches."""
_CAPTION_INIT = 29
"""Purpose part of the seed of the captioner's initialisation."""


class CaptionTrainingError(VideoBertError, ValueError):
    """A checkpoint that does not belong to the requested training; the message names the fix."""


@dataclass(frozen=True, kw_only=True)
class CaptionerSettings:
    """How one captioner is shaped and trained (``CaptionConfig`` fills it). The defaults suit a
    set of YouCook2's size (about 10K training segments); the demo trains a smaller one."""

    width: int = 256
    """Captioner width (model dimension)."""
    heads: int = 4
    """Attention heads."""
    encoder_layers: int = 2
    """Transformer layers over the feature slots."""
    decoder_layers: int = 2
    """Transformer layers of the word decoder."""
    ffn: int = 1024
    """Feed-forward width."""
    dropout: float = 0.1
    """Dropout in every layer."""
    max_words: int = 24
    """Longest caption in words (longer references are cut for training)."""
    steps: int = 3000
    """Training steps of each captioner."""
    batch_size: int = 64
    """Segments per step."""
    lr: float = 5e-4
    """Peak learning rate (AdamW; linear warm-up, cosine decay to a tenth)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_steps: int = 200
    """Warm-up steps."""
    label_smoothing: float = 0.1
    """Label smoothing of the word loss."""
    checkpoint_every: int = 500
    """Save each captioner every N steps (and at the end)."""
    log_every: int = 50
    """TensorBoard interval in steps."""
    seed: int = 0
    """Seed of the captioners' initialisation, batches and dropout, and of the probes."""
    captioners: int = 3
    """Captioners trained per row, alike but from different seeds: a row's scores are their mean, and
    its intervals and Table 3's verdicts resample them as well as the segments, so that they cover
    another training of the captioners (1: one captioner, intervals over the segments alone)."""

    def shape(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("width", "heads", "encoder_layers", "decoder_layers", "ffn", "dropout",
                                              "max_words")}


def targets_of(captions: Sequence[str], words: CaptionWords, max_words: int) -> torch.Tensor:
    """(N, T) ``<bos> words <eos>`` padded with ``<pad>``."""
    rows = [words.encode(c, max_words) for c in captions]
    out = torch.full((len(rows), max(len(r) for r in rows)), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def learning_rate(step: int, s: CaptionerSettings) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_captioner(row: str, row_index: int, features: np.ndarray, slot_dims: Sequence[int], captions: Sequence[str],
                    words: CaptionWords, settings: CaptionerSettings, checkpoints: Path, identity: dict[str, Any],
                    writer: Any = None, progress: bool = False, device: torch.device | str = "cpu",
                    member: int = 0) -> Captioner:
    """The row's trained captioner number ``member``: resumed from ``checkpoints`` (see module doc),
    trained to ``settings.steps``. On a CPU it trains on one thread: a model this small only loses to
    thread hand-offs, more so on a busy machine."""
    with one_thread_on_cpu(device):
        return _train(row, row_index, member, features, slot_dims, captions, words, settings, checkpoints, identity,
                      writer, progress, torch.device(device))


@contextlib.contextmanager
def one_thread_on_cpu(device: torch.device | str):
    """Torch on one thread for the block when ``device`` is the CPU (small models run faster so)."""
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train(row, row_index, member, features, slot_dims, captions, words, settings, checkpoints, identity, writer,
           progress, device) -> Captioner:
    from tqdm import tqdm

    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
    y = targets_of(captions, words, settings.max_words).to(device)
    torch.manual_seed(int(positional_rng(settings.seed, _CAPTION_INIT, row_index, member).integers(2**31)))
    model = Captioner(slot_dims, len(words), **settings.shape())
    model.set_standardisation(x.cpu())
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, fused=True)
    state = {"row": row, "member": member, "identity": identity, "words": list(words.words), "arguments": model.arguments}
    step = _resume(model, optimizer, checkpoints, state)
    model.train()
    name = f"{row}/{member}" if settings.captioners > 1 else row
    with tqdm(total=settings.steps, initial=step, desc=f"caption {name}", unit="step", disable=not progress) as bar:
        while step < settings.steps:
            loss = _step(model, optimizer, x, y, (row_index, member), step, settings)
            step += 1
            bar.update(1)
            if writer is not None and (step % settings.log_every == 0 or step == settings.steps):
                writer.add_scalar(f"{name}/loss", loss, step)
                writer.add_scalar(f"{name}/lr", learning_rate(step - 1, settings), step)
            if step % settings.checkpoint_every == 0 or step == settings.steps:
                save_checkpoint(model, optimizer, checkpoints, step, state)
    model.eval()
    return model


def _step(model: Captioner, optimizer, x: torch.Tensor, y: torch.Tensor, who: tuple[int, int], step: int,
          s: CaptionerSettings) -> float:
    """One step on the batch of (row index, member) ``who`` at ``step``."""
    rng = positional_rng(s.seed, _CAPTION_BATCHES, *who, step)
    picks = torch.from_numpy(rng.choice(len(x), size=min(s.batch_size, len(x)), replace=False)).to(x.device)
    torch.manual_seed(int(rng.integers(2**31)))  # the step's dropout draw
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, s)
    targets = y[picks]
    targets = targets[:, : int((targets != PAD).sum(dim=1).max())]
    loss = caption_loss(model, x[picks], targets, s.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()


def save_checkpoint(model: Captioner, optimizer, checkpoints: Path, step: int, state: dict[str, Any]) -> Path:
    """``step-N`` with weights, optimizer, state and (last) the COMPLETE marker; older ones removed."""
    folder = CheckpointFolder(checkpoints / CheckpointFolder.name_of(step))
    shutil.rmtree(folder.path, ignore_errors=True)
    folder.path.mkdir(parents=True)
    save_file({k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()},
              folder.path / CAPTIONER_WEIGHTS)
    torch.save(optimizer.state_dict(), folder.path / OPTIMIZER_STATE)
    write_json(folder.path / CAPTIONER_STATE, {**state, "step": step})
    write_json(folder.complete_marker, {"step": step, "time": time.time()})
    for _, older in step_dirs(checkpoints):
        if older != folder.path:
            shutil.rmtree(older, ignore_errors=True)
    return folder.path


def _resume(model: Captioner, optimizer, checkpoints: Path, state: dict[str, Any]) -> int:
    newest = latest_complete(checkpoints)
    if newest is None:
        return 0
    saved = json.loads((newest / CAPTIONER_STATE).read_text(encoding="utf-8"))
    differing = sorted(k for k in state if saved.get(k) != json.loads(json.dumps(state[k])))
    if differing:
        raise CaptionTrainingError(f"{newest} was trained with other {', '.join(differing)}: remove {checkpoints} "
                                   "or write to another --out (``--overwrite`` starts the rows afresh)")
    device = next(model.parameters()).device
    model.load_state_dict(load_file(newest / CAPTIONER_WEIGHTS, device=str(device)))
    optimizer.load_state_dict(torch.load(newest / OPTIMIZER_STATE, map_location=device, weights_only=True))
    return int(saved["step"])
