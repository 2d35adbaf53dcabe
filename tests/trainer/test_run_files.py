"""The run folder's own files after a crash: a metrics line cut short (SIGKILL, a full disk, a power cut)
is dropped, never glued to the next run's first line, the steps logged past the resumed checkpoint are
dropped (logged again), and the report reads what remains."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile

from PIL import Image

from videobert.trainer.evaluation import report
from videobert.trainer.metrics import TensorBoard
from videobert.trainer.run_folder import RunFolder


def test_a_cut_metrics_line_is_dropped_when_the_run_resumes(tmp_path):
    run = RunFolder(tmp_path)
    lines = [json.dumps({"step": s, "split": "train", "loss": 5.0 - s}) for s in (1, 2, 3)]
    run.metrics.write_text("\n".join(lines) + '\n{"step": 4, "split": "train", "lo')  # the kill's cut
    board = TensorBoard(run, enabled=True, resumed_at=2)  # the resumed run, from its step-2 checkpoint
    for step in (3, 4):
        board.scalars("train", {"loss": 5.0 - step}, step)
    board.close()
    rows = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4], "step 3 of the killed run is not listed twice"

    shutil.rmtree(run.tensorboard)  # a run whose events are gone: the report reads metrics.jsonl
    assert report.read_curves(tmp_path) == {"loss": [(1, 4.0), (2, 3.0), (3, 2.0), (4, 1.0)]}
    assert report.plot_curves(report.read_curves(tmp_path), tmp_path / "curves.png")
    with Image.open(tmp_path / "curves.png") as image:
        image.verify()


def test_the_report_skips_lines_an_older_run_glued_together(tmp_path):
    run = RunFolder(tmp_path)
    run.metrics.write_text('{"step": 1, "split": "train", "loss": 3.0}\n'
                           '{"step": 2, "split": "train", "lo{"step": 2, "split": "train", "loss": 2.5}\n'
                           '{"step": 3, "split": "train", "loss": 2.0}\n')
    assert report.read_curves(tmp_path) == {"loss": [(1, 3.0), (3, 2.0)]}


def test_a_file_holding_only_a_cut_line_is_emptied(tmp_path):
    run = RunFolder(tmp_path)
    run.metrics.write_text('{"step": 1, "spl')
    TensorBoard(run, enabled=True).close()
    assert run.metrics.read_text() == ""


def test_control_characters_of_a_shard_key_are_escaped_in_the_training_log(tmp_path):
    """The trainer's log (set up as ``videobert train`` sets it up) shows a bad sample's key escaped:
    a key cannot recolour the terminal or forge a log line with a carriage return or a newline."""
    key = "v\x1b[31m\rstep 99 loss 0\nforged"
    shard = tmp_path / "bad.tar"
    with tarfile.open(shard, "w") as tar:
        for field, data in (("json", b"{}"), ("txt", b"caption")):
            info = tarfile.TarInfo(f"{key}.{field}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    script = ("import sys; from videobert.shards import reader; from videobert.trainer.data import ReadErrors; "
              "from videobert.trainer.train import log_to_stderr; log_to_stderr(); "
              "list(reader.iter_samples([sys.argv[1]], on_error=ReadErrors()))")
    done = subprocess.run([sys.executable, "-c", script, str(shard)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "skipped unreadable data in" in lines[0], done.stderr
    assert "v\\x1b[31m\\x0dstep 99 loss 0\\x0aforged" in lines[0] and "\x1b" not in done.stderr
