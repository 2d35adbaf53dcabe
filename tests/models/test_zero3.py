"""The model under real DeepSpeed ZeRO-3 (2 CPU processes, gloo): built partitioned under
``deepspeed.zero.Init``, tied word table, per-layer activation checkpointing, and ranks whose
micro-batches train different objectives (text-only on one, video + alignment on the other).
After two SGD steps the weights equal those of one process training on both micro-batches."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from videobert.models.config import preset
from videobert.models.videobert import VideoBertForPreTraining
from videobert.models.vocab import IGNORE_INDEX, JointVocab

STEPS = 2
DS_CONFIG = {
    "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0,
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "optimizer": {"type": "SGD", "params": {"lr": 0.5}}, "zero_allow_untested_optimizer": True,
}


def _config():
    vocab = JointVocab(text_vocab_size=200, num_visual_tokens=50, cls_id=2, sep_id=3, mask_id=4, pad_id=0, unk_id=1)
    return preset("tiny", vocab, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, gradient_checkpointing=True)


def _micro_batch(vocab: JointVocab, rank: int):
    g = torch.Generator().manual_seed(rank)
    ids = torch.randint(5, vocab.size, (2, 16), generator=g)
    ids[:, 0] = vocab.cls_id
    labels = torch.full_like(ids, IGNORE_INDEX)
    if rank == 0:  # text targets only, no alignment target
        labels[:, 3] = ids[:, 3] % vocab.text_vocab_size
        alignment = torch.full((2,), IGNORE_INDEX)
    else:  # visual targets and alignment targets, no text target
        labels[:, 5] = vocab.visual_offset + torch.tensor([2, 9])
        alignment = torch.tensor([0, 1])
    return ids, torch.zeros_like(ids), torch.ones_like(ids), labels, alignment


def _worker(rank: int, port: int, init_state: dict, out_file: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_ACCELERATOR="cpu")
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    from videobert.trainer.engine import unlink_shm_buffer

    unlink_shm_buffer()  # DeepSpeed's CPU op would leave its buffer in /dev/shm
    config = _config()
    with deepspeed.zero.Init(config_dict_or_path=DS_CONFIG):
        model = VideoBertForPreTraining(config)
    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0):
        if rank == 0:
            model.load_state_dict(init_state)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=DS_CONFIG)
    batch = _micro_batch(config.vocab, rank)
    for _ in range(STEPS):
        engine.backward(engine(*batch).loss)
        engine.step()
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        if rank == 0:
            torch.save({n: p.detach().clone() for n, p in model.named_parameters()}, out_file)
    # Leave together: a rank that exits while gloo still serves its peer can abort in teardown.
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_zero3_training_equals_single_process_training(tmp_path):
    pytest.importorskip("deepspeed")
    config = _config()
    torch.manual_seed(0)
    reference = VideoBertForPreTraining(config).train()
    init_state = {k: v.clone() for k, v in reference.state_dict().items()}
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
    for _ in range(STEPS):  # ZeRO averages gradients over ranks: the mean of the two losses
        optimizer.zero_grad()
        (sum(reference(*_micro_batch(config.vocab, r)).loss for r in range(2)) / 2).backward()
        optimizer.step()
    out_file = str(tmp_path / "params.pt")
    mp.start_processes(_worker, args=(_free_port(), init_state, out_file), nprocs=2, start_method="spawn")
    trained = torch.load(out_file, weights_only=True)
    for name, param in reference.named_parameters():
        moved = float((param.detach() - init_state[name]).abs().max())
        assert moved > 0, name
        torch.testing.assert_close(trained[name], param.detach(), rtol=1e-5, atol=1e-6, msg=name)
