"""The process group of a plain process: ``init_distributed`` makes a one-process group and
``leave_distributed`` leaves the process as it found it, environment included."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, os, sys
import torch.distributed as dist
from videobert.trainer.distributed import init_distributed, leave_distributed
names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
seen = []
for _ in range(2):
    info = init_distributed()
    seen.append({"during": {n: n in os.environ for n in names}, "world": dist.get_world_size(), "port": os.environ["MASTER_PORT"],
                 "set": list(info.set_environment)})
    leave_distributed(info, True)
    seen[-1]["after"] = {n: n in os.environ for n in names}
    seen[-1]["group_after"] = dist.is_initialized()
print(json.dumps(seen))
"""


def test_a_plain_process_leaves_no_group_and_no_rank_variables_behind():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env={**env, "DS_ACCELERATOR": "cpu"}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    for one in seen:
        assert one["world"] == 1 and all(one["during"].values()), one
        assert sorted(one["set"]) == sorted(one["during"]) and not any(one["after"].values()), one
        assert not one["group_after"]


def test_a_launched_process_keeps_the_launchers_variables():
    probe = PROBE.replace("range(2)", "range(1)")
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "DS_ACCELERATOR": "cpu"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    (one,) = json.loads(done.stdout.strip().splitlines()[-1])
    assert one["set"] == [] and all(one["after"].values()) and not one["group_after"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
