"""The stages with their folders in a bucket of a real Google Cloud Storage API server (fake-gcs-server
on the loopback, reached through gcsfs): ``gs://`` takes the same paths as ``s3://`` and gives the
same shards (keys, bytes), codebook and samples as local disk."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_gcs import BUCKET, FakeGcsServer, binary  # noqa: E402
from serving import serving  # noqa: E402
from test_stages_in_bucket import shard_bytes, stages  # noqa: E402

from videobert.models.visual.codebook import CODEBOOK_FILE  # noqa: E402
from videobert.shards import reader, schema, storage  # noqa: E402
from videobert.shards.synthetic.corpus import SynthConfig, render_corpus  # noqa: E402
from videobert.trainer import cli  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(binary() is None or not __import__("importlib").util.find_spec("gcsfs"),
                                 reason="needs gcsfs and fake-gcs-server (the dev extras)")]


@pytest.fixture(scope="module")
def gcs_server(tmp_path_factory):
    with serving(FakeGcsServer(tmp_path_factory.mktemp("fake-gcs"))) as server:
        yield server


def test_every_stage_writes_the_same_shards_into_a_gcs_bucket(gcs_server, tmp_path, capsys):
    root = tmp_path / "corpus"
    render_corpus(root, SynthConfig(train_videos=2, heldout_videos=1, seed=1), workers=2, progress=False)
    local, bucket = tmp_path / "local", f"gs://{BUCKET}/stages-{int(time.time() * 1000)}"
    stages(root / "train", str(local))
    stages(root / "train", bucket)

    for folder in ("clips", "train"):
        here, there = shard_bytes(f"{local}/{folder}"), shard_bytes(f"{bucket}/{folder}")
        assert list(here) == list(there) and len(here) >= 2, folder
        assert here == there, f"{folder}: the same bytes"
    assert storage.read_bytes(f"{bucket}/codebook/{CODEBOOK_FILE}") == (local / "codebook" / CODEBOOK_FILE).read_bytes()
    listed = storage.list_files(f"{bucket}/clips")
    assert {schema.RUN_FILE, schema.SUMMARY_FILE, schema.ERRORS_FILE} <= set(listed)
    assert not [name for name in listed if name.endswith(schema.PARTIAL_SUFFIX)]

    streamed = [(s.key, s.text, s.tokens.tolist()) for s in reader.iter_samples(reader.resolve_shards(f"{bucket}/train"))]
    read = [(s.key, s.text, s.tokens.tolist()) for s in reader.iter_samples(reader.resolve_shards(f"{local}/train"))]
    assert streamed == read and streamed
    assert cli.main(["shards", "status", f"{bucket}/clips"]) == 0
    assert f"{bucket}/clips: a prepare run of one part, finished" in capsys.readouterr().out
