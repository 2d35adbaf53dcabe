"""How a command-line process ends (no heavy imports: the command line loads this before any command)."""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn


def end_process(status: int) -> NoReturn:
    """End the process with ``status`` after Python's own shutdown work and before the interpreter's
    teardown: the first two steps of the interpreter's shutdown run (threading's: executors are told to
    stop, the other non-daemon threads joined; then the atexit handlers: the run lock, logging, worker
    processes), the streams are flushed, and the process ends without the module teardown and the C++
    libraries' static destructors. One of those can abort a process whose work is done, saved and
    synchronised, its process group left (SIGABRT, "terminate called without an active exception",
    seen in one rank of a 3-rank gloo run on CPUs just after its last checkpoint), and a launcher
    reads that as a failed rank. For the command line and the modules launchers start, never for a
    function called inside another program."""
    try:
        threading._shutdown()  # what the interpreter runs first: executors told to stop, other threads joined
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed or gone: nothing left to lose
                pass
        os._exit(status)
