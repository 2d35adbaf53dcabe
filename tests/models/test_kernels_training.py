"""Training with the ``triton`` kernel set gives the run the ``reference`` set gives.

A tiny model trains 3 steps on padded joint batches (text, video and alignment targets; one
micro-batch without any video target, so one fused loss sees no target at all) with each set,
from the same weights and the same dropout seeds:

- on one process (AdamW): losses agree to 1e-5 relative, weights after the 3 steps to 1e-5;
- under real DeepSpeed ZeRO-3 on 2 CPU processes (gloo), with activation checkpointing: the tied
  word table is partitioned, and the fused loss must read it gathered inside the decoder's forward
  and backward; losses and weights agree as above;
- on a GPU in bf16 under ZeRO-3 with unpadded attention (marked ``gpu``): losses agree to 2e-2
  relative (bf16 rounding over 3 steps), parameters stay bf16 and the loss fp32.

On a CPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from videobert.models.config import preset
from videobert.models.kernels.triton_support import triton_available
from videobert.models.videobert import VideoBertForPreTraining
from videobert.models.vocab import IGNORE_INDEX, JointVocab

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")
STEPS = 3
LOSS_RTOL = 1e-5
DS_CONFIG = {
    "train_micro_batch_size_per_gpu": 3, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0,
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "optimizer": {"type": "SGD", "params": {"lr": 0.5}}, "zero_allow_untested_optimizer": True,
}


def _vocab() -> JointVocab:
    return JointVocab(text_vocab_size=200, num_visual_tokens=50, cls_id=2, sep_id=3, mask_id=4, pad_id=0, unk_id=1)


def _config(**overrides):
    return preset("tiny", _vocab(), **overrides)


def _batch(vocab: JointVocab, seed: int, video_targets: bool = True):
    """Three padded rows of joint ids; ~30 % text targets, video targets unless told otherwise."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab.size, (3, 20), generator=g)
    ids[:, 0] = vocab.cls_id
    types = (ids >= vocab.visual_offset).long()
    mask = torch.ones_like(ids)
    mask[1, 13:], mask[2, 7:] = 0, 0
    chosen = (torch.rand(ids.shape, generator=g) < 0.3) & mask.bool()
    chosen[:, 0] = False
    if not video_targets:
        chosen &= ids < vocab.visual_offset
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    alignment = torch.tensor([0, 1, IGNORE_INDEX])
    return ids, types, mask, labels, alignment


def _batches(vocab: JointVocab, rank: int = 0):
    return [_batch(vocab, seed=10 * rank + step, video_targets=step != 1) for step in range(STEPS)]


def _train_one_process(kernels: str, init_state: dict) -> tuple[list[float], dict]:
    model = VideoBertForPreTraining(_config()).train()
    model.load_state_dict(init_state)
    model.set_kernels(kernels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for step, batch in enumerate(_batches(model.vocab)):
        torch.manual_seed(100 + step)  # the same dropout masks for both sets
        optimizer.zero_grad()
        loss = model(*batch).loss
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}


def _initial_state() -> dict:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in VideoBertForPreTraining(_config()).state_dict().items()}


def _assert_same_run(a: tuple[list[float], dict], b: tuple[list[float], dict], init: dict, loss_rtol: float) -> None:
    assert a[0] == pytest.approx(b[0], rel=loss_rtol), (a[0], b[0])
    for name, param in b[1].items():
        assert float((param.float() - init[name].float()).abs().max()) > 0, f"{name} never trained"
        torch.testing.assert_close(a[1][name].float(), param.float(), rtol=1e-5, atol=1e-5, msg=name)


def test_three_steps_on_one_process_match():
    init = _initial_state()
    reference = _train_one_process("reference", init)
    fused = _train_one_process("triton", init)
    _assert_same_run(fused, reference, init, LOSS_RTOL)


# -- two ranks under ZeRO-3 ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _zero3_run(sets: tuple[str, str], init_state: dict, rank: int, device: str, ds_config: dict,
               **config) -> tuple[list, dict, set]:
    """Train ``STEPS`` steps under ZeRO-3 on this rank's micro-batches with (kernel set, attention
    mode) ``sets``: (loss and its dtype per step, the gathered weights on rank 0, parameter dtypes)."""
    import deepspeed

    kernels, attention = sets
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = VideoBertForPreTraining(_config(**config))
    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0):
        if rank == 0:
            model.load_state_dict(init_state)
    model.set_kernels(kernels)
    model.set_attention(attention)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    losses = []
    for step, batch in enumerate(_batches(model.vocab, rank)):
        torch.manual_seed(100 + step)
        out = engine(*[t.to(device) for t in batch])
        engine.backward(out.loss)
        engine.step()
        losses.append((float(out.loss.detach()), out.loss.dtype))
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        weights = {n: p.detach().float().cpu() for n, p in model.named_parameters()} if rank == 0 else {}
        dtypes = {p.dtype for p in model.parameters()}
    return losses, weights, dtypes


def _zero3_worker(rank: int, world: int, port: int, init_state: dict, out_file: str, device: str,
                  ds_config: dict, runs: tuple[tuple[str, str], ...], config: dict) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    if device == "cpu":
        os.environ["DS_ACCELERATOR"] = "cpu"
    else:
        torch.cuda.set_device(rank)
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo" if device == "cpu" else "nccl")
    from videobert.trainer.engine import unlink_shm_buffer

    unlink_shm_buffer()  # DeepSpeed's CPU op would leave its buffer in /dev/shm
    results = {}
    for run in runs:
        torch.manual_seed(0)
        results[run] = _zero3_run(run, init_state, rank, device, ds_config, **config)
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, results)
    if rank == 0:
        torch.save(gathered, out_file)
    torch.distributed.barrier()  # leave together: gloo can abort a peer that is still being served
    torch.distributed.destroy_process_group()


def _run_zero3(tmp_path, world: int, device: str, ds_config: dict, runs, **config) -> list[dict]:
    """Every rank's results, per run, from ``world`` spawned processes."""
    out_file = str(tmp_path / "runs.pt")
    args = (world, _free_port(), _initial_state(), out_file, device, ds_config, runs, config)
    mp.start_processes(_zero3_worker, args=args, nprocs=world, start_method="spawn")
    return torch.load(out_file, weights_only=True)


def _losses(run) -> list[float]:
    return [value for value, _ in run[0]]


@pytest.mark.slow
def test_three_steps_under_two_rank_zero3_match(tmp_path):
    pytest.importorskip("deepspeed")
    runs = (("reference", "auto"), ("triton", "auto"))
    per_rank = _run_zero3(tmp_path, 2, "cpu", DS_CONFIG, runs, gradient_checkpointing=True)
    for results in per_rank:  # each rank's own micro-batches: rank 0 and 1 see different targets
        assert _losses(results[runs[1]]) == pytest.approx(_losses(results[runs[0]]), rel=LOSS_RTOL)
    reference, fused = per_rank[0][runs[0]], per_rank[0][runs[1]]
    _assert_same_run((_losses(fused), fused[1]), (_losses(reference), reference[1]), _initial_state(), LOSS_RTOL)


@pytest.mark.gpu
def test_bf16_training_under_zero3_on_a_gpu_matches_the_reference(tmp_path):
    """bf16 end to end on one GPU: reference kernels with padded attention against triton kernels
    with unpadded attention; ZeRO-3's bf16 path keeps fp32 master weights for the optimizer."""
    pytest.importorskip("deepspeed")
    runs = (("reference", "padded"), ("triton", "varlen"))
    ds_config = {**DS_CONFIG, "bf16": {"enabled": True}}
    (results,) = _run_zero3(tmp_path, 1, "cuda", ds_config, runs, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0)
    reference, fused = results[runs[0]], results[runs[1]]
    assert reference[2] == fused[2] == {torch.bfloat16}
    assert all(dtype == torch.float32 for _, dtype in reference[0] + fused[0])
    assert _losses(fused) == pytest.approx(_losses(reference), rel=2e-2)
