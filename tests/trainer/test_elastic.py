"""Elastic training for real: a ZeRO-3 checkpoint resumes on another number of ranks and workers with its
whole state and an exactly-once data position; torchrun's elastic agent shrinks and grows a job.

One saved run (2 ranks x 2 workers, 4 steps) is the start of every case: it resumes on 1 rank x 1
worker (2 -> 1), that one on 2 ranks x 2 workers (1 -> 2) and on 3 ranks (2 -> 1 -> 3, audited to
the end of the next epoch); torchrun's agents continue a copy of it as two "nodes" on the loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from jobs import ROOT, audit_by_epoch, finish, kill_tree, launch, metrics, start, tail, trainer_args, wait_for
from shard_factory import write_codebook, write_token_shards

from videobert.trainer.checkpoint import CheckpointError, consolidated_model, plan_resume, seed_new_rank
from videobert.trainer.run_folder import COMPLETE, CheckpointFolder, RunFolder, latest_complete

pytestmark = pytest.mark.slow

GLOBAL_BATCH = 24
COMMON = [
    f"optim.global_batch_size={GLOBAL_BATCH}", "optim.micro_batch_size=4", "data.audit=true",
    "model.hidden_dropout=0", "model.attention_dropout=0", "optim.warmup_steps=50",
]
"""The global batch holds at 1, 2 and 3 ranks (accumulation 6, 3, 2); no dropout, so that a loss
depends on the weights and the batch alone; a warm-up longer than the runs keeps the learning rate
above 0."""


SHM = Path("/dev/shm")


def _shm_buffers() -> set[str]:
    return {p.name for p in SHM.glob("deepspeed_allreduce_buffer_*")} if SHM.is_dir() else set()


@pytest.fixture(scope="module", autouse=True)
def shm_before() -> set[str]:
    return _shm_buffers()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """192 samples (48 videos) in 12 shards: 4 to 6 optimizer steps an epoch."""
    root = tmp_path_factory.mktemp("elastic-inputs")
    codebook = write_codebook(root / "codebook.safetensors")
    write_token_shards(root / "train", videos=48, segments=4, shards=12, codebook_hash=codebook.hash,
                       num_tokens=codebook.num_leaves)
    return root


def _probed(run: Path, inputs: Path, nproc: int, *overrides: str, timeout: float = 300) -> dict[int, dict]:
    probe = run / f"probe-{len(list(run.glob('probe-*')))}"
    job = launch(run, inputs, *COMMON, *overrides, nproc=nproc, probe=probe)
    assert finish(job, run, timeout) == 0, tail(run)
    return {int(p.stem.rsplit("-", 1)[1]): torch.load(p, weights_only=True) for p in probe.glob("probe-rank-*.pt")}


def _continued(source: Path, run: Path) -> Path:
    shutil.copytree(source, run)
    (run / "job.log").write_text("")
    return run


@pytest.fixture(scope="module")
def saved(inputs, tmp_path_factory):
    """2 ranks x 2 workers trained 4 steps; its step-4 checkpoint and the engine state it holds."""
    run = tmp_path_factory.mktemp("elastic") / "saved"
    record = _probed(run, inputs, 2, "max_steps=4", "data.num_workers=2")
    return run, record[0]["end"]


@pytest.fixture(scope="module")
def shrunk(saved, inputs):
    """The saved run resumed on 1 rank x 1 worker and trained to step 8."""
    run = _continued(saved[0], saved[0].parent / "shrunk")
    return run, _probed(run, inputs, 0, "max_steps=8", "data.num_workers=0")


def _assert_resumed_exactly(resumed: dict, saved: dict) -> None:
    """Right after the resume: fp32 weights and both moments as saved (exactly), the optimizer's step,
    the groups' learning rates and weight decays, and the schedule's position."""
    tensors = [k for k in saved if "/" in k]
    assert tensors and set(tensors) == {k for k in resumed if "/" in k}
    for key in tensors:
        assert torch.equal(resumed[key], saved[key]), key
    assert set(resumed["steps"]) == set(saved["steps"]) and len(set(saved["steps"])) == 1
    assert resumed["groups"] == saved["groups"]
    assert len({wd for _, wd in saved["groups"]}) == 2, "the groups without weight decay keep 0"
    assert resumed["schedule"] == saved["schedule"]
    assert resumed["tied"] and saved["tied"], "the MLM decoder shares the word table"


def _assert_first_loss_is_the_saved_models(record: dict, folder: Path) -> None:
    model = consolidated_model(folder)
    first = record["first"]
    with torch.no_grad():
        loss = model(**first["inputs"]).loss.item()
    assert first["loss"] == pytest.approx(loss, rel=1e-5)


def test_two_ranks_resume_on_one_with_the_whole_state(saved, shrunk):
    (source, saved_state), (run, record) = saved, shrunk
    _assert_resumed_exactly(record[0]["start"], saved_state)
    assert set(record[0]["end"]["steps"]) == {8.0}, "each optimizer group counts one step per step"
    _assert_first_loss_is_the_saved_models(record[0], source / "checkpoints" / "step-4")
    rng = torch.load(source / "checkpoints/step-4/trainer/rng-00000.pt", weights_only=True)["torch"]
    assert torch.equal(record[0]["start"]["rng"], rng), "rank 0 existed before: it resumes its own RNG"
    assert "on 1 rank(s) x 1 stream(s); it was written by 2 x 2" in tail(run)
    files = lambda folder: sorted((p.relative_to(folder), p.stat().st_size) for p in folder.rglob("*") if p.is_file())
    assert files(run / "checkpoints/step-4") == files(source / "checkpoints/step-4"), "nothing written beside it"
    after = CheckpointFolder(latest_complete(RunFolder(run).checkpoints))
    assert after.path.name == "step-8" and after.marker()["world_size"] == 1
    assert {s["samples"] for s in metrics(run).values()} == {GLOBAL_BATCH}, "the global batch holds"
    old = [CheckpointFolder(source / "checkpoints/step-4").read_trainer_state(r) for r in (0, 1)]
    new = CheckpointFolder(run / "checkpoints/step-8").read_trainer_state(0)
    assert new["samples"] == sum(s["samples"] for s in old) + 4 * GLOBAL_BATCH, "counters carried"


def test_one_rank_resumes_on_two_and_new_ranks_seed_their_rng(shrunk, inputs):
    source, _ = shrunk
    run = _continued(source, source.parent / "grown")
    record = _probed(run, inputs, 2, "max_steps=9", "data.num_workers=2")
    _assert_resumed_exactly(record[0]["start"], shrunk[1][0]["end"])
    for rank in (0, 1):
        _assert_first_loss_is_the_saved_models(record[rank], source / "checkpoints" / "step-8")
    seed_new_rank(0, 1, 8)
    assert torch.equal(record[1]["start"]["rng"], torch.get_rng_state()), "a new rank seeds from (seed, rank, step)"
    assert "on 2 rank(s) x 2 stream(s); it was written by 1 x 1" in tail(run)
    assert len(list((run / "checkpoints/step-9").glob("*model_states.pt"))) == 2, "every rank saved its model states"


@pytest.fixture(scope="module")
def three(shrunk, inputs):
    """The 1-rank run resumed on 3 ranks x 1 worker and trained to step 22 (past the next epoch)."""
    source, _ = shrunk
    run = _continued(source, source.parent / "three")
    return run, _probed(run, inputs, 3, "max_steps=22", "data.num_workers=0")


def test_two_one_three_ranks_consume_each_sample_once_per_epoch(three):
    run, _ = three
    assert "on 3 rank(s) x 1 stream(s); it was written by 1 x 1" in tail(run)
    final = CheckpointFolder(run / "checkpoints" / "step-22")
    epochs = [p["epoch"] for r in range(3) for p in final.read_trainer_state(r)["positions"].values()]
    keys = {k for counts in audit_by_epoch(run, 22).values() for k in counts}
    assert len(keys) == 192
    seen = audit_by_epoch(run, 22)
    assert min(epochs) >= 2, "every stream has finished the epochs of both changes and the one after"
    for epoch, counts in seen.items():
        assert max(counts.values()) == 1, f"epoch {epoch}: a sample consumed twice"
        if epoch < min(epochs):
            assert set(counts) == keys, f"epoch {epoch}: samples missing"
    lines = [(rank, line["step"], line["epoch"]) for rank in range(3) for line in _audit_lines(run, rank)]
    assert len(lines) == len(set(lines)), "a rank lists each step (and epoch) once"
    assert sorted({step for _, step, _ in lines}) == list(range(1, 23))


def test_three_ranks_resume_on_two(three, inputs):
    """Old and new pieces both cut across ranks: every parameter's new piece straddles old ones."""
    source, record3 = three
    run = _continued(source, source.parent / "three-two")
    record = _probed(run, inputs, 2, "max_steps=23", "data.num_workers=0")
    _assert_resumed_exactly(record[0]["start"], record3[0]["end"])
    for rank in (0, 1):
        _assert_first_loss_is_the_saved_models(record[rank], source / "checkpoints" / "step-22")
    assert "on 2 rank(s) x 1 stream(s); it was written by 3 x 1" in tail(run)


def _audit_lines(run: Path, rank: int) -> list[dict]:
    from videobert.trainer.audit import read_audit

    path = RunFolder(run).audit(rank)
    return read_audit(path) if path.exists() else []


def test_a_checkpoint_missing_an_old_ranks_file_is_refused_before_the_engine_is_built(saved, inputs, tmp_path):
    from videobert.models.visual.codebook import Codebook

    root = tmp_path / "checkpoints"
    shutil.copytree(saved[0] / "checkpoints" / "step-4", root / "step-4")
    victim = next((root / "step-4").glob("*zero_pp_rank_1_*optim_states.pt"))
    victim.unlink()
    model = json.loads((root / "step-4" / "model.json").read_text())
    codebook = Codebook.load(inputs / "codebook.safetensors")
    with pytest.raises(CheckpointError, match="every complete checkpoint is damaged"):
        plan_resume(root, "auto", 0, 3, model, codebook)  # the marker's checksums name the missing file
    with pytest.raises(CheckpointError, match=f"{victim} is missing"):
        plan_resume(root, "step-4", 0, 3, model, codebook)
    # A checkpoint saved before checksums: the re-partitioning check still names the missing rank.
    marker = json.loads((root / "step-4" / COMPLETE).read_text())
    (root / "step-4" / COMPLETE).write_text(json.dumps({k: v for k, v in marker.items() if k != "files"}))
    with pytest.raises(CheckpointError, match=r"written by 2 ranks but holds optimizer files for ranks \[0\] \(missing: \[1\]\)"):
        plan_resume(root, "auto", 0, 3, model, codebook)
    assert plan_resume(root, "auto", 0, 2, model, codebook).other_world_size is False, "the same size reads no other rank's"


def test_a_damaged_old_rank_file_is_named(saved, tmp_path):
    from videobert.trainer.reshard import ReshardError, _OldRank

    folder = shutil.copytree(saved[0] / "checkpoints" / "step-4", tmp_path / "step-4")
    victim = next(folder.glob("*zero_pp_rank_1_*optim_states.pt"))
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(ReshardError, match=f"{victim} is unreadable"):
        _OldRank(victim, [], 2)


def test_a_checkpoint_of_another_model_or_codebook_is_refused_before_loading(saved, inputs, tmp_path):
    from videobert.models.visual.codebook import Codebook
    from videobert.trainer.config import ConfigError

    root = saved[0] / "checkpoints"
    codebook = Codebook.load(inputs / "codebook.safetensors")
    model = json.loads((root / "step-4" / "model.json").read_text())
    wider = {**model, "hidden_size": 2 * model["hidden_size"]}
    before = sorted(p for p in root.rglob("*") if p.is_file())
    with pytest.raises(CheckpointError, match=r"another model \(hidden_size: 64 there, 128 here\)"):
        plan_resume(root, "auto", 0, 3, wider, codebook)
    # the alignment head decides which parameters exist: another one is refused too
    with pytest.raises(CheckpointError, match=r"another model \(alignment_head: 'cls' there, 'pair' here\)"):
        plan_resume(root, "auto", 0, 3, {**model, "alignment_head": "pair"}, codebook)
    # a model.json written before the field existed held the [CLS] head
    from videobert.trainer.checkpoint import ResumePlan, _check_fits
    from videobert.trainer.run_folder import CheckpointFolder

    older = shutil.copytree(root / "step-4", tmp_path / "older" / "step-4")
    (older / "model.json").write_text(json.dumps({k: v for k, v in model.items() if k != "alignment_head"}))
    plan = ResumePlan(folder=older, world_size=2, num_streams=1, ranks=2)
    _check_fits(CheckpointFolder(older), model, codebook, plan)
    with pytest.raises(CheckpointError, match=r"alignment_head: 'cls' there, 'pair' here"):
        _check_fits(CheckpointFolder(older), {**model, "alignment_head": "pair"}, codebook, plan)
    other = write_codebook(tmp_path / "other.safetensors", seed=5)
    with pytest.raises(ConfigError, match="data.codebook"):
        plan_resume(root, "auto", 0, 3, model, other)
    assert sorted(p for p in root.rglob("*") if p.is_file()) == before, "nothing written, nothing deleted"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _complete(run: Path, world_size: int, after: int = -1) -> Path | None:
    """The newest complete checkpoint written by ``world_size`` ranks past step ``after``."""
    found = []
    for path in sorted((run / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:])):
        try:  # the running job may prune it meanwhile
            if int(path.name[5:]) > after and CheckpointFolder(path).marker()["world_size"] == world_size:
                found.append(path)
        except OSError:
            continue
    return found[-1] if found else None


def _logs(run: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(run.glob("node-*.log")))


def test_torchrun_agents_shrink_the_job_when_a_node_dies_and_grow_it_when_one_joins(saved, inputs):
    """Two torchrun agents on the loopback as two nodes (launch/train_torchrun_elastic.sh, --nnodes=1:2):
    the node without the rendezvous store is killed (agent and workers), the survivor's group restarts
    on 1 rank from the newest complete checkpoint; a node joins again and the group grows to 2."""
    run = _continued(saved[0], saved[0].parent / "torchrun")
    port = _free_port()
    rdzv = "join_timeout=120,last_call_timeout=3,close_timeout=10,keep_alive_interval=2,keep_alive_max_attempt=5"
    env = dict(NNODES="1:2", NPROC="1", RDZV_ENDPOINT=f"127.0.0.1:{port}", RDZV_ID="elastic-test", MAX_RESTARTS="2",
               LOCAL_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo", PYTHON=sys.executable)
    # On one machine both agents match the endpoint's host: say which one runs the store.
    host, guest = dict(env, RDZV_CONF=f"{rdzv},is_host=true"), dict(env, RDZV_CONF=f"{rdzv},is_host=false")
    overrides = [*COMMON, "max_steps=100000", "checkpoint.every_steps=2", "data.num_workers=0", "dist_timeout_s=60"]
    command = ["bash", str(ROOT / "launch/train_torchrun_elastic.sh"), str(ROOT / "launch/recipes/debug.yaml"),
               *(f"--{s}" for s in trainer_args(run, inputs, overrides))]
    agents = {"a": start(command, run / "node-a.log", **host), "b": start(command, run / "node-b.log", **guest)}
    try:
        wait_for(lambda: _complete(run, 2, after=4) is not None, agents["a"], run, log="node-a.log")
        assert "on 2 rank(s) x 1 stream(s); it was written by 2 x 2" in _logs(run)

        kill_tree(agents["b"].pid)  # node b is lost: its agent and its worker
        agents["b"].wait()
        newest = latest_complete(run / "checkpoints")
        wait_for(lambda: _complete(run, 1) is not None, agents["a"], run, log="node-a.log")
        assert f"resumed from {newest} (step {newest.name[5:]}) on 1 rank(s) x 1 stream(s); it was written by 2 x 1" in _logs(run)

        shrunk_to = int(_complete(run, 1).name[5:])
        agents["b"] = start(command, run / "node-b.log", **guest)  # a node joins
        wait_for(lambda: _complete(run, 2, after=shrunk_to + 1) is not None, agents["a"], run, log="node-a.log")
        assert "on 2 rank(s) x 1 stream(s); it was written by 1 x 1" in _logs(run)
    finally:
        for job in agents.values():
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGTERM)  # the agents stop their workers, which checkpoint
        for job in agents.values():
            try:
                job.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
            kill_tree(job.pid)
    last = latest_complete(run / "checkpoints")
    step = int(last.name[5:])
    assert {m["samples"] for s, m in metrics(run).items() if s <= step} == {GLOBAL_BATCH}, "the global batch held"
    for epoch, counts in audit_by_epoch(run, step).items():
        assert max(counts.values()) == 1, f"epoch {epoch}: a sample consumed twice across the changes"


def test_no_rank_leaves_its_shared_memory_buffer(shm_before, saved, shrunk):
    """DeepSpeed's CPU communication op gives each rank a buffer in /dev/shm and never unlinks it; the
    trainer does, once every rank has mapped every other's (the jobs of this module ran 1 to 3 ranks)."""
    if not SHM.is_dir():
        pytest.skip("no /dev/shm here")
    assert _shm_buffers() - shm_before == set()
