"""One run at a time in a run folder: a lease that rank 0 holds while the run trains.

The lock is the file ``run_dir/LOCK``: created exclusively, it names its holder (host, pid, the
process's start time) and its ``mtime`` is renewed every ``RENEW_S`` seconds by a thread of the
holder. A second run on the folder (a requeued job while the old one still runs) is refused with a
message naming the holder. A lock whose holder is gone is taken over, so that a crash never leaves a
folder stuck:

* held on this host: the holder is gone when no process has its pid and start time (at once);
* held on another host: its lease is over when it was not renewed for ``LEASE_S`` seconds. A run
  that finds a fresh lease of another host waits up to ``LEASE_S`` for it to end (a requeued job
  may start while the node of the old one is still being cleaned up), then is refused.

A holder whose lock was taken over (it looked dead: a host cut off for longer than the lease) finds
out at its next checkpoint and stops before it writes anything (``RunLock.check``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from videobert.models.errors import VideoBertError

log = logging.getLogger(__name__)

LOCK_FILE = "LOCK"
RENEW_S = 10.0
LEASE_S = float(os.environ.get("VIDEOBERT_LOCK_LEASE_S", "60"))
"""Seconds without renewal after which another host's lock counts as abandoned."""


class RunFolderLocked(VideoBertError, RuntimeError):
    """Another run holds the run folder (or took it over from this one)."""

    exit_status = 1


def process_start(pid: int) -> str:
    """The start time of process ``pid`` (clock ticks since boot; '' where /proc has none): with the
    pid it names one process, even after the pid is reused."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive_here(holder: dict) -> bool:
    try:
        pid = int(holder["pid"])
        if pid <= 0:
            return False
        os.kill(pid, 0)
    except (TypeError, ValueError, OverflowError):  # not a pid: nobody holds it
        return False
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    started = process_start(pid)
    return not (started and holder.get("started") and started != holder["started"])


def describe(holder: dict) -> str:
    since = holder.get("since")
    when = f" (since {time.ctime(since)})" if isinstance(since, (int, float)) and 0 < since < 1e11 else ""
    return f"host {holder.get('host')!r}, pid {holder.get('pid')}{when}"


class RunLock:
    """The lease on one run folder, held by this process."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.token = uuid.uuid4().hex
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "started": process_start(os.getpid()),
                       "since": time.time(), "token": self.token}
        self.lost = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> "RunLock":
        """Take the lock (waiting out another host's fresh lease, at most ``LEASE_S``) or raise."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + LEASE_S + RENEW_S
        while not self._try_create():
            holder, text = self._read()
            if self._abandoned(holder):
                self._take_over(holder, text)
                continue
            if holder.get("host") == self.record["host"] or time.monotonic() > deadline:
                raise RunFolderLocked(
                    f"{self.path.parent} is in use by another run ({describe(holder)}; lock file {self.path}): "
                    "wait for it to end or stop it, or give this run another run_dir")
            time.sleep(1.0)
        self._thread = threading.Thread(target=self._renew, name="run-lock", daemon=True)
        self._thread.start()
        return self

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(self.record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return True

    def _read(self) -> tuple[dict, str]:
        try:
            text = self.path.read_text(encoding="utf-8")
            holder = json.loads(text)
            return (holder if isinstance(holder, dict) else {}), text
        except (OSError, ValueError):
            return {}, ""

    def _abandoned(self, holder: dict) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False  # released meanwhile: the next try creates it
        if holder.get("host") == self.record["host"] and "pid" in holder:
            return not _alive_here(holder)
        return age > LEASE_S  # another host's (or an unreadable) lock: only its lease tells

    def _take_over(self, holder: dict, text: str) -> None:
        # Renamed away first: of two runs taking over at once, one rename finds the file gone, and
        # one that renamed a lock created meanwhile (not the abandoned one) puts it back.
        aside = self.path.with_name(f"{LOCK_FILE}.{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if aside.read_text(encoding="utf-8") != text:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        else:
            log.warning("%s: taking over the lock of a run that is gone (%s)", self.path.parent, describe(holder))
        aside.unlink()

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S) and not self._lost_it():
            try:
                os.utime(self.path)
            except OSError as e:
                log.warning("could not renew the run lock %s: %s", self.path, e)

    def _lost_it(self) -> bool:
        """Whether the lock file is gone or names another holder (an error reading it is not proof)."""
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self.lost = self.lost or "its lock file was removed"
        except (OSError, ValueError):  # unreadable for now, or a taker's file half written
            return bool(self.lost)
        else:
            if isinstance(holder, dict) and holder.get("token") != self.token:
                self.lost = self.lost or f"taken over by {describe(holder)}"
        return bool(self.lost)

    def check(self) -> None:
        """Raise when the lock is no longer this run's (before writing into the folder)."""
        if self._lost_it():
            raise RunFolderLocked(f"{self.path.parent} is no longer this run's ({self.lost}): stopping without writing")

    def release(self) -> None:
        self._stop.set()
        holder, _ = self._read()
        if holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)
