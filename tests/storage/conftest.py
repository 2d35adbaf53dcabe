"""The object-storage tests' server: one SeaweedFS S3 gateway on the loopback per test session, with a
bucket; its credentials reach the code under test the standard way, through the environment."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from seaweed import BUCKET, SeaweedServer  # noqa: E402


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def bucket_prefix(s3_server) -> str:
    """A fresh prefix in the session's bucket, as a URL."""
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"
