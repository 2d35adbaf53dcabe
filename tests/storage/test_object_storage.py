"""Shards in a bucket of a real S3-compatible server (SeaweedFS on the loopback): written atomically
through the stages' own writer, listed and streamed like a local folder, and the trust rule for URLs
named by a file that came with a model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "trainer"))
from shard_factory import write_clip_shards, write_token_shards  # noqa: E402

from videobert.shards import reader, schema, storage  # noqa: E402
from videobert.shards.writer import resume_point  # noqa: E402


def _bytes_by_name(files: dict[str, bytes]) -> dict[str, bytes]:
    return dict(sorted(files.items()))


def test_shards_written_into_a_bucket_read_back_as_the_local_folder(bucket_prefix, tmp_path):
    local = tmp_path / "tokens"
    write_token_shards(local, videos=6, segments=3, shards=3)
    with storage.working_folder(bucket_prefix) as work:
        write_token_shards(Path(work), videos=6, segments=3, shards=3)

    listed = storage.list_files(bucket_prefix)
    assert sorted(listed) == sorted(p.name for p in local.iterdir())
    for name in listed:
        assert storage.read_bytes(storage.join(bucket_prefix, name)) == (local / name).read_bytes(), name

    remote_urls = reader.resolve_shards(bucket_prefix)
    assert [u.rsplit("/", 1)[1] for u in remote_urls] == [p.name for p in schema.complete_shards(local)]
    remote = [(s.key, s.text, s.tokens.tolist()) for s in reader.iter_samples(remote_urls)]
    here = [(s.key, s.text, s.tokens.tolist()) for s in reader.iter_samples(reader.resolve_shards(str(local)))]
    assert remote == here and len(remote) == 18
    assert reader.read_stats(remote_urls[0])["samples"] == 6


def test_a_shard_in_a_bucket_is_fetched_once_and_a_member_over_its_limit_is_named_unread(
        bucket_prefix, tmp_path, monkeypatch):
    """The members' sizes are checked from their headers as the shard streams: a shard larger than the
    largest member allowed is not read twice (once for its headers, once for its samples)."""
    local = tmp_path / "clips"
    write_clip_shards(local, videos=4, segments=3, shards=1, clip_len=4, size=16)
    [shard] = schema.complete_shards(local)
    url = storage.join(bucket_prefix, shard.name)
    storage.upload(shard, url)
    fetched: list[int] = []
    fetch = storage.RetryingReader._fetch
    monkeypatch.setattr(storage.RetryingReader, "_fetch",
                        lambda self, start, end: fetched.append(end - start) or fetch(self, start, end))
    monkeypatch.setattr(schema, "MAX_ARRAY_BYTES", shard.stat().st_size // 4)  # the shard is larger than this

    def raw(urls: list[str], problems: list[str]) -> list[tuple[str, list[str]]]:
        return [(r["__key__"], sorted(k for k in r if not k.startswith("__")))
                for r in reader.iter_raw_samples(urls, on_error=lambda u, e: problems.append(str(e)))]

    here_problems: list[str] = []
    there_problems: list[str] = []
    here = raw([str(shard)], here_problems)
    there = raw([url], there_problems)
    assert here == there and len(there) == 12 and not here_problems and not there_problems
    assert schema.FRAMES in there[0][1]
    assert sum(fetched) <= shard.stat().st_size + 2 * 512, "the shard once, and its last two tar blocks"

    sizes = {r["__key__"]: len(r[schema.FRAMES]) for r in reader.iter_raw_samples([url])}
    limit = min(sizes.values()) - 1
    monkeypatch.setitem(schema.MAX_MEMBER_BYTES, schema.FRAMES, limit)
    here_problems.clear()
    there_problems.clear()
    here, there = raw([str(shard)], here_problems), raw([url], there_problems)
    assert here == there and all(schema.FRAMES not in fields for _, fields in there)
    assert [p.replace(str(shard), url) for p in here_problems] == there_problems
    assert [p for p in there_problems if "the schema allows" in p] == [
        f"{url}: member {key}.{schema.FRAMES} is {size} bytes, more than the {limit} the schema allows; not read"
        for key, size in sizes.items()]


def _read_in_a_forked_child(url: str) -> tuple[int, list[str]]:
    """In the forked child: read with a client of its own, then collect the garbage the parent left
    (a cycle holding the parent's client) on the child's event loop, where a client's end would run
    if nothing disowned it; what the event loop logged comes back."""
    import asyncio
    import gc
    import logging
    import time

    import fsspec.asyn

    logged: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    logging.getLogger("asyncio").addHandler(handler)
    data = storage.read_bytes(url)  # the child's own client and event loop
    gc.enable()

    async def collect() -> None:
        gc.collect()
        await asyncio.sleep(0.2)
        gc.collect()

    fsspec.asyn.sync(fsspec.asyn.get_loop(), collect)
    time.sleep(0.2)
    gc.collect()
    return len(data), logged


def test_a_forked_worker_leaves_the_parents_store_client_alone(bucket_prefix):
    """DataLoader and prepare workers are forked from a process whose store client has open connections
    and an event loop of its own. A worker reads with a client of its own and never ends its copy of
    the parent's: ended there, on the worker's event loop, it fails ("attached to a different loop",
    logged by the worker), and it would take the parent's connections out of the parent's poller,
    which a fork shares."""
    import gc
    import multiprocessing
    import time

    url = storage.join(bucket_prefix, "object")
    storage.put_bytes(url, b"x" * 100_000)
    for _ in range(4):  # connections in the parent's pool
        assert len(storage.read_bytes(url)) == 100_000
    gc.disable()
    try:
        garbage: list = [storage.filesystem(url)[0]]
        garbage.append(garbage)  # a reference cycle holding the client, as a finished reader may leave
        del garbage
        with multiprocessing.get_context("fork").Pool(2) as pool:
            results = pool.map(_read_in_a_forked_child, [url] * 2)
    finally:
        gc.enable()
    assert [length for length, _ in results] == [100_000] * 2
    assert [logged for _, logged in results] == [[], []]
    started = time.monotonic()
    for _ in range(8):
        assert len(storage.read_bytes(url)) == 100_000
    assert time.monotonic() - started < 5, "the parent's requests after its workers ended"


def test_a_tar_without_its_stats_object_is_not_complete_and_a_resume_rewrites_it(bucket_prefix, tmp_path):
    with storage.working_folder(bucket_prefix) as work:
        write_token_shards(Path(work), videos=4, segments=2, shards=2)
    storage.remove(storage.join(bucket_prefix, "shard-000001.stats.json"))  # as if killed between the two uploads
    assert [u.rsplit("/", 1)[1] for u in reader.resolve_shards(bucket_prefix)] == ["shard-000000.tar"]
    with storage.working_folder(bucket_prefix) as work:
        point = resume_point(work)
        assert point.next_index == 1 and [s.shard for s in point.shards] == ["shard-000000.tar"]


def test_globs_single_objects_and_missing_prefixes(bucket_prefix):
    with storage.working_folder(bucket_prefix) as work:
        write_token_shards(Path(work), videos=4, segments=2, shards=2)
    assert len(reader.resolve_shards(f"{bucket_prefix}/shard-*.tar")) == 2
    one = f"{bucket_prefix}/shard-000001.tar"
    assert reader.resolve_shards(one) == [one]
    with pytest.raises(reader.ShardSpecError, match="no shards found"):
        reader.resolve_shards(f"{bucket_prefix}-nothing-here")


def test_which_urls_a_file_that_came_with_a_model_may_name(bucket_prefix, tmp_path):
    with storage.working_folder(bucket_prefix) as work:
        write_token_shards(Path(work), videos=2, segments=2, shards=1)
    assert len(reader.resolve_shards(bucket_prefix, from_file="ckpt/config.json")) == 1
    for refused in ("pipe:cat /etc/passwd", "http://127.0.0.1:1/shard-000000.tar",
                    f"simplecache::{bucket_prefix}", "ftp://host/shard-000000.tar"):
        with pytest.raises(reader.ShardSpecError, match="came with a model may only name local files"):
            reader.resolve_shards(refused, from_file="ckpt/config.json", allow="add --trust")
    with pytest.raises(reader.ShardSpecError, match="carries credentials"):
        reader.resolve_shards("s3://KEY:SECRET@bucket/prefix")


def test_a_stream_reads_ahead_in_blocks_and_gives_every_byte_wherever_it_seeks(bucket_prefix, monkeypatch):
    import random

    monkeypatch.setattr(storage, "READ_BLOCK_BYTES", 64 << 10)
    data = random.Random(0).randbytes((5 << 18) + 12345)  # 20 blocks and a part
    url = storage.join(bucket_prefix, "object.bin")
    storage.put_bytes(url, data)
    with storage.open_stream(url) as stream:
        assert stream.read() == data

    reader_ = storage.RetryingReader(url)
    fetched: list[tuple[int, int]] = []
    fetch = reader_._fetch
    monkeypatch.setattr(reader_, "_fetch", lambda start, end: fetched.append((start, end)) or fetch(start, end))
    assert reader_.readinto(buffer := bytearray(10)) == 10 and bytes(buffer) == data[:10]
    reader_._pending[-1][1].result()
    assert fetched == [(0, 64 << 10), (64 << 10, 128 << 10), (128 << 10, 192 << 10)], "the next two blocks asked for"
    rng = random.Random(1)
    for _ in range(100):
        start, size = rng.randrange(len(data)), rng.randrange(1, 200_000)
        reader_.seek(start)
        got = reader_.read(size)
        assert got == data[start : start + len(got)] and 0 < len(got) <= size
    reader_.seek(len(data))
    assert reader_.read(10) == b""
    reader_.close()


def test_a_missing_object_is_named_at_once_not_retried(bucket_prefix, monkeypatch):
    import time

    monkeypatch.setenv(storage.RETRY_SECONDS_VARIABLE, "300")
    started = time.monotonic()
    with pytest.raises(storage.StorageError, match=f"reading {bucket_prefix}/shard-000009.tar"):
        storage.read_bytes(f"{bucket_prefix}/shard-000009.tar")
    assert time.monotonic() - started < 10


def test_a_models_config_may_not_point_its_codebook_at_another_host():
    from types import SimpleNamespace

    import torch

    from videobert.trainer.config import load_config
    from videobert.trainer.evaluation.load import ModelLoadError, visual_tokenizer_for

    for refused in ("http://127.0.0.1:1/codebook.safetensors", "ftp://host/codebook.safetensors"):
        cfg = load_config(None, [f"data.codebook={refused}", "data.train=shards"])
        loaded = SimpleNamespace(cfg=cfg, codebook_hash=None)
        with pytest.raises(ModelLoadError, match="may not name .*name it with --codebook"):
            visual_tokenizer_for(loaded, None, None, torch.device("cpu"))
