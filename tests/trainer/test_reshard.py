"""The ZeRO-3 re-partitioning arithmetic of ``trainer.reshard``, on every small layout.

A parameter of ``n`` elements cut for ``N`` ranks (each piece ``ceil(n / N)``, the last padded
with zeros) and re-cut for ``M`` ranks must give each new rank exactly its slice of the padded
parameter; the whole-state equality through DeepSpeed is in ``test_elastic.py``.
"""

from __future__ import annotations

import math

import torch

from videobert.trainer.reshard import _new_piece


class _Pieces:
    """An old rank holding its pieces of the named parameters, laid out one after the other."""

    def __init__(self, full: dict[str, torch.Tensor], rank: int, ranks: int) -> None:
        self.where, chunks, offset = {}, [], 0
        for name, tensor in full.items():
            p = math.ceil(tensor.numel() / ranks)
            padded = torch.cat([tensor.flatten(), torch.zeros(p * ranks - tensor.numel(), dtype=tensor.dtype)])
            chunks.append(padded[rank * p:(rank + 1) * p])
            self.where[name] = offset
            offset += p
        self.flat = torch.cat(chunks)

    def piece(self, key: str, name: str, start: int, stop: int) -> torch.Tensor:
        return self.flat[self.where[name] + start: self.where[name] + stop]


def test_every_new_rank_gets_its_slice_of_every_parameter():
    generator = torch.Generator().manual_seed(0)
    full = {f"p{n}": torch.randn(n, generator=generator, dtype=torch.float64) for n in (1, 2, 3, 5, 7, 12, 13, 64)}
    for old_ranks in range(1, 6):
        olds = [_Pieces(full, k, old_ranks) for k in range(old_ranks)]
        for ranks in range(1, 7):
            for name, tensor in full.items():
                q = math.ceil(tensor.numel() / ranks)
                pieces = [_new_piece(olds, "fp32", name, tensor.numel(), r, ranks) for r in range(ranks)]
                assert all(p.shape == (q,) and p.dtype == torch.float64 for p in pieces)
                joined = torch.cat(pieces)
                assert torch.equal(joined[: tensor.numel()], tensor), (old_ranks, ranks, name)
                assert not joined[tensor.numel():].any(), "the padding is zeros"


class _Runs:
    """An object whose unpickling would call a function: what a crafted checkpoint file carries."""

    def __reduce__(self):
        return (print, ("a checkpoint file ran code",))


def test_a_checkpoint_file_holding_other_objects_is_refused_naming_it(tmp_path, capsys):
    import pytest
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from videobert.trainer.reshard import ReshardError, _deepspeed_file

    fine = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": {"zero_stage": ZeroStageEnum.weights, "loss_scaler": LossScaler(1.0),
                                         "fp32_flat_groups": [torch.ones(3)]}, "ds_version": "x"}, fine)
    read = _deepspeed_file(fine, mmap=True)
    assert read["optimizer_state_dict"]["zero_stage"] == ZeroStageEnum.weights
    assert torch.equal(read["optimizer_state_dict"]["fp32_flat_groups"][0], torch.ones(3))

    crafted = tmp_path / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": {"loss_scaler": _Runs()}}, crafted)
    with pytest.raises(ReshardError, match=rf"{crafted} holds a print: only tensors"):
        _deepspeed_file(crafted, mmap=True)
    assert "ran code" not in capsys.readouterr().out
