"""The object-storage tests' server: one SeaweedFS S3 gateway on the loopback per test session, with a
bucket; its credentials reach the code under test the standard way, through the environment."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from seaweed import BUCKET, SeaweedServer  # noqa: E402
from serving import serving  # noqa: E402


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    with serving(SeaweedServer(tmp_path_factory.mktemp("seaweedfs"))) as server:
        yield server


@pytest.fixture
def bucket_prefix(s3_server) -> str:
    """A fresh prefix in the session's bucket, as a URL."""
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"
