"""How a command-line process ends: ``trainer.process.end_process``."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import atexit, os, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from videobert.trainer.process import end_process

out = sys.argv[1]

def write(word):
    with open(out, "a") as f:
        f.write(word + "\\n")

class Teardown:
    # What a library object destroyed in the interpreter's teardown does in the failure guarded against.
    def __del__(self):
        os.abort()

keep = Teardown()
pool = ThreadPoolExecutor(1)  # left open, its worker idle: the interpreter tells it to stop before joining it
pool.submit(write, "pool").result()
atexit.register(write, "atexit")
threading.Thread(target=lambda: (time.sleep(0.5), write("thread"))).start()
print("printed", end="")  # still in the buffer
if sys.argv[2] == "end_process":
    end_process(7)
sys.exit(7)
"""


def _child(tmp_path, how: str):
    out = tmp_path / f"{how}.txt"
    done = subprocess.run([sys.executable, "-c", CHILD, str(out), how], capture_output=True, text=True, timeout=60)
    return done, out.read_text().split()


def test_a_process_ends_with_its_status_after_its_threads_and_exit_handlers_and_skips_the_teardown(tmp_path):
    done, written = _child(tmp_path, "end_process")
    assert done.returncode == 7, done.stderr
    assert done.stdout == "printed"
    assert written == ["pool", "thread", "atexit"]  # the thread joined first, as the interpreter joins it


def test_the_same_process_left_to_the_interpreter_aborts_in_its_teardown(tmp_path):
    done, written = _child(tmp_path, "sys.exit")
    assert done.returncode < 0, (done.returncode, done.stderr)  # SIGABRT: the launcher would read a failed rank
    assert written == ["pool", "thread", "atexit"]
