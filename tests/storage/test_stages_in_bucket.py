"""Every shard stage with its folders in a bucket of a real S3-compatible server (SeaweedFS on the
loopback): prepare -> fit-codebook -> tokenize -> train on the synthetic corpus (real ffmpeg-rendered
videos) gives the same shards (keys, bytes), codebook and losses as on local disk; a prepare killed
while it uploads leaves nothing a reader takes for complete, and its re-run completes."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "trainer"))
from jobs import finish, job_env, kill_tree, metrics, tail  # noqa: E402
from test_training_from_bucket import command  # noqa: E402

from videobert.models.visual.codebook import CODEBOOK_FILE  # noqa: E402
from videobert.shards import reader, schema, storage  # noqa: E402
from videobert.shards.fit_codebook import (  # noqa: E402
    FEATURES_FOLDER, FitCodebookConfig, extract_features, fit_codebook,
)
from videobert.shards.parts import Part  # noqa: E402
from videobert.shards.prepare import PrepareConfig, prepare  # noqa: E402
from videobert.shards.synthetic.corpus import SynthConfig, render_corpus  # noqa: E402
from videobert.shards.tokenize_clips import TokenizeConfig, tokenize  # noqa: E402
from videobert.trainer import cli  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    render_corpus(root, SynthConfig(train_videos=3, heldout_videos=1, seed=0), workers=2, progress=False)
    return root / "train"


def prepare_config(corpus: Path, out: str) -> PrepareConfig:
    return PrepareConfig(videos=(str(corpus / "videos"),), transcripts=(str(corpus / "captions.json"),), out=out,
                         fps=10.0, size=64, clip_len=15, max_samples=4, workers=1, progress=False)


def stages(corpus: Path, where: str) -> None:
    prepare(prepare_config(corpus, f"{where}/clips"))
    fit_codebook(FitCodebookConfig(clips=(f"{where}/clips",), out=f"{where}/codebook", encoder="synthetic",
                                   depth=2, branching=3, seed=0, progress=False))
    tokenize(TokenizeConfig(clips=(f"{where}/clips",), codebook=f"{where}/codebook/{CODEBOOK_FILE}",
                            out=f"{where}/train", workers=1, progress=False))


def shard_bytes(where: str) -> dict[str, bytes]:
    """Each complete shard of a folder or prefix, by name, with its bytes."""
    urls = reader.resolve_shards(where)
    read = storage.read_bytes if storage.is_remote(where) else (lambda u: Path(u).read_bytes())
    return {u.rsplit("/", 1)[1]: read(u) for u in urls}


@pytest.fixture(scope="module")
def pipelines(s3_server, corpus, tmp_path_factory):
    local = tmp_path_factory.mktemp("local")
    bucket = f"s3://videobert-tests/stages-{int(time.time() * 1000)}"
    stages(corpus, str(local))
    stages(corpus, bucket)
    return str(local), bucket


def test_every_stage_writes_the_same_shards_into_a_bucket(pipelines, capsys):
    local, bucket = pipelines
    for folder in ("clips", "train"):
        here, there = shard_bytes(f"{local}/{folder}"), shard_bytes(f"{bucket}/{folder}")
        assert list(here) == list(there) and len(here) >= 2, folder
        assert here == there, f"{folder}: the same bytes"
    codebook = Path(local) / "codebook" / CODEBOOK_FILE
    assert storage.read_bytes(f"{bucket}/codebook/{CODEBOOK_FILE}") == codebook.read_bytes()
    listed = storage.list_files(f"{bucket}/clips")
    assert {schema.RUN_FILE, schema.SUMMARY_FILE, schema.ERRORS_FILE} <= set(listed)
    assert not [name for name in listed if name.endswith(schema.PARTIAL_SUFFIX)]

    assert cli.main(["shards", "status", f"{bucket}/clips"]) == 0
    assert f"{bucket}/clips: a prepare run of one part, finished" in capsys.readouterr().out
    assert cli.main(["shards", "inspect", f"{bucket}/train"]) == 0
    assert f"{len(shard_bytes(local + '/train'))} shards" in capsys.readouterr().out


def test_training_from_the_bucket_gives_the_losses_of_local_disk(pipelines, tmp_path):
    local, bucket = pipelines
    runs = {}
    for name, where in (("local", local), ("bucket", bucket)):
        run = tmp_path / name
        job = subprocess.Popen(command(run, where, 1, "max_steps=6", "data.num_workers=1",
                                       codebook=f"codebook/{CODEBOOK_FILE}"), env=job_env(),
                               stdout=open(tmp_path / f"{name}.log", "wb"), stderr=subprocess.STDOUT,
                               start_new_session=True)
        assert finish(job, run) == 0, (tmp_path / f"{name}.log").read_text()[-4000:]
        runs[name] = metrics(run)
    assert max(runs["bucket"]) == 6
    for step, values in runs["local"].items():
        for key in ("loss", "grad_norm", "tokens", "samples"):
            assert runs["bucket"][step][key] == pytest.approx(values[key], rel=1e-6, abs=1e-9), (step, key)
    # eval of each run, its held-out shards named where they are: the same figures
    evaluated = {}
    for name, where in (("local", local), ("bucket", bucket)):
        out = tmp_path / f"{name}-eval"
        assert cli.main(["eval", str(tmp_path / name), "--heldout", f"{where}/train", "--out", str(out),
                         "--batch-size", "8"]) == 0
        evaluated[name] = json.loads((out / "results.json").read_text())
    assert evaluated["bucket"]["heldout_source"] == f"{bucket}/train"
    for part in ("heldout", "heldout_video_in_turn"):
        here, there = evaluated["local"][part], evaluated["bucket"][part]
        assert here.keys() == there.keys() and here["alignment_count" if part == "heldout" else "targets"] > 0
        for key, value in here.items():
            assert there[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (part, key)


def test_a_prepare_killed_while_uploading_leaves_no_complete_shard_and_its_rerun_completes(
        s3_server, corpus, pipelines, tmp_path):
    _, finished = pipelines
    out = f"s3://videobert-tests/killed-{int(time.time() * 1000)}/clips"
    config = prepare_config(corpus, out)
    cli = [str(Path(sys.executable).with_name("videobert")), "shards", "prepare", "--videos", config.videos[0],
           "--transcripts", config.transcripts[0], "--out", out, "--fps", "10", "--size", "64", "--clip-len", "15",
           "--max-samples", "4", "--workers", "1", "--no-progress"]
    log = tmp_path / "prepare.log"
    job = subprocess.Popen(cli, env=job_env(), stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    while not any(name.endswith(".tar") for name in storage.list_files(out)):
        assert job.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no upload started"
        time.sleep(0.02)
    kill_tree(job.pid, signal.SIGKILL)  # the first tar is in the bucket: its stats file may or may not be
    job.wait()
    listed = storage.list_files(out)
    assert schema.SUMMARY_FILE not in listed, "killed before it finished"
    complete = shard_bytes(out) if any(n.endswith(schema.STATS_SUFFIX) for n in listed) else {}
    whole = shard_bytes(f"{finished}/clips")
    for name, data in complete.items():
        assert data == whole[name], f"{name}: what a reader takes for complete is whole"
    prepare(config)
    assert shard_bytes(out) == whole


def test_prepare_in_parts_into_a_bucket_and_its_status(corpus, pipelines, capsys):
    _, finished = pipelines
    out = f"s3://videobert-tests/parts-{int(time.time() * 1000)}/clips"
    for part in ("0/2", "1/2"):
        prepare(dataclasses.replace(prepare_config(corpus, out), part=part))
    assert cli.main(["shards", "status", out]) == 0
    printed = capsys.readouterr().out
    assert f"{out}: prepare in 2 parts: 2 finished" in printed and "adds up" in printed
    keys = {s.key for s in reader.iter_samples(reader.resolve_shards(out), decode_arrays=False)}
    whole = {s.key for s in reader.iter_samples(reader.resolve_shards(f"{finished}/clips"), decode_arrays=False)}
    assert keys == whole
    assert schema.SUMMARY_FILE in storage.list_files(out)


def test_the_feature_pass_in_parts_into_a_bucket_then_the_fit_there(pipelines, capsys):
    local, finished = pipelines
    out = f"s3://videobert-tests/features-{int(time.time() * 1000)}/codebook"
    config = FitCodebookConfig(clips=(f"{finished}/clips",), out=out, encoder="synthetic", depth=2, branching=3,
                               seed=0, progress=False)
    first = extract_features(config, Part(0, 2))
    assert first.shards >= 1 and first.shards_kept == 0 and first.clips_used > 0
    listed = storage.list_files(f"{out}/{FEATURES_FOLDER}")
    assert any(name.startswith("part-00000/features-") and name.endswith(".npy") for name in listed), listed
    assert extract_features(config, Part(0, 2)).shards_kept == first.shards  # resumed from the listing
    assert cli.main(["shards", "fit-codebook", "--clips", f"{finished}/clips", "--out", out, "--encoder", "synthetic",
                     "--depth", "2", "--branching", "3", "--seed", "0", "--no-progress", "--part", "1/2"]) == 0
    assert cli.main(["shards", "status", f"{out}/{FEATURES_FOLDER}", "--no-write"]) == 0
    assert "2 finished" in capsys.readouterr().out

    summary = fit_codebook(config)  # on another machine: every part's features read from the bucket
    codebook = Path(local) / "codebook" / CODEBOOK_FILE
    assert storage.read_bytes(f"{out}/{CODEBOOK_FILE}") == codebook.read_bytes()
    assert summary.clips_used == json.loads((Path(local) / "codebook" / schema.SUMMARY_FILE).read_text())["clips_used"]
    assert not [name for name in storage.list_files(out) if name.startswith(FEATURES_FOLDER + "/")]
