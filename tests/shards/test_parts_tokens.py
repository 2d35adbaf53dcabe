"""fit-codebook's feature pass and tokenize in parts: the same codebook hash and the same token shards as one
run, a shard that fails is listed and retried, the fit is saved before its picture, features are reused,
and the trainer trains on a folder written by parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_tokenize import clip_sample, write_shards

from videobert.models.visual.codebook import CODEBOOK_FILE, Codebook
from videobert.shards import reader, schema
from videobert.shards.fit_codebook import FEATURES_FOLDER, FitCodebookConfig, extract_features, fit_codebook
from videobert.shards.parts import Part
from videobert.shards.tokenize_clips import TokenizeConfig, tokenize
from videobert.trainer import cli
from videobert.trainer.run_folder import RunFolder

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Five clip shards, 20 samples of 1 to 3 clips."""
    samples = [clip_sample(f"video{v}", s, n_clips=1 + (v + s) % 3, seed=10 * v + s) for v in range(10) for s in range(2)]
    folder = tmp_path_factory.mktemp("clips")
    write_shards(folder, samples, per_shard=4)
    return folder


def _fit_config(clips: Path, out: Path, **overrides) -> FitCodebookConfig:
    options = dict(clips=(str(clips),), out=str(out), encoder="synthetic", depth=2, branching=3, num_clips=25,
                   batch_size=4, progress=False)
    return FitCodebookConfig(**(options | overrides))


@pytest.fixture(scope="module")
def codebook(clips, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("codebook")
    fit_codebook(_fit_config(clips, out))
    return out / CODEBOOK_FILE


def _tokenize(clips: Path, codebook: Path, out: Path, **overrides):
    options = dict(clips=(str(clips),), codebook=str(codebook), out=str(out), workers=1, progress=False)
    return tokenize(TokenizeConfig(**(options | overrides)))


def _tars(folder: Path) -> list[tuple[str, bytes]]:
    return [(t.name, t.read_bytes()) for t in schema.complete_shards(folder)]


# ---------------------------------------------------------------------------------------------------
# fit-codebook


def test_a_codebook_fitted_from_parts_has_the_hash_of_one_run(clips, codebook, tmp_path):
    out = tmp_path / "split"
    first = extract_features(_fit_config(clips, out, part="0/2"), Part(0, 2))
    assert first.shards == 3 and not (out / CODEBOOK_FILE).exists()
    with pytest.raises(Exception, match=r"parts \[1\] are not finished"):
        fit_codebook(_fit_config(clips, out))
    assert cli.main(["shards", "fit-codebook", "--clips", str(clips), "--out", str(out), "--encoder", "synthetic",
                        "--depth", "2", "--branching", "3", "--num-clips", "25", "--batch-size", "4",
                        "--no-progress", "--part", "1/2"]) == 0
    assert cli.main(["shards", "status", str(out / FEATURES_FOLDER), "--no-write"]) == 0
    summary = fit_codebook(_fit_config(clips, out))
    assert summary.codebook_hash == Codebook.load(codebook).hash
    assert summary.clips_used == 25 and summary.shards == 5
    assert not (out / FEATURES_FOLDER).exists() and not (out / "features.npy").exists()


def test_the_fit_is_saved_before_its_picture_and_features_survive_a_failure(clips, codebook, tmp_path, capsys):
    out = tmp_path / "book"
    (out / "leaves.png").mkdir(parents=True)  # a picture that cannot be written
    summary = fit_codebook(_fit_config(clips, out))
    assert summary.picture.startswith("not drawn: IsADirectoryError")
    assert Codebook.load(out / CODEBOOK_FILE).hash == Codebook.load(codebook).hash
    assert json.loads((out / schema.SUMMARY_FILE).read_text())["codebook_hash"] == summary.codebook_hash

    again = tmp_path / "again"
    (again / "features.npy").mkdir(parents=True)  # the merged sample cannot be written: the fit fails
    with pytest.raises(OSError):
        fit_codebook(_fit_config(clips, again))
    records = sorted((again / FEATURES_FOLDER).glob("features-*.json"))
    assert len(records) == 5, "the features outlive a failed fit"
    written = [r.stat().st_mtime_ns for r in records]
    (again / "features.npy").rmdir()
    assert fit_codebook(_fit_config(clips, again, keep_features=True)).codebook_hash == Codebook.load(codebook).hash
    assert [r.stat().st_mtime_ns for r in records] == written  # reused, not encoded again
    features = json.loads((again / FEATURES_FOLDER / schema.SUMMARY_FILE).read_text())
    assert features["shards_kept"] == 5 and features["clips_used"] == 25


# ---------------------------------------------------------------------------------------------------
# tokenize


def test_tokenize_in_parts_writes_the_shards_of_one_run(clips, codebook, tmp_path):
    one = _tokenize(clips, codebook, tmp_path / "one")
    for k in range(3):
        part = _tokenize(clips, codebook, tmp_path / "split", part=f"{k}/3")
        assert part.shards_read == len(range(k, 5, 3))
    assert _tars(tmp_path / "split") == _tars(tmp_path / "one")  # same names, bytes and reading order
    assert [Path(u).parent.name for u in reader.resolve_shards(tmp_path / "split")] == \
        [f"part-0000{i % 3}" for i in range(5)]
    combined = json.loads((tmp_path / "split" / schema.SUMMARY_FILE).read_text())
    assert combined["parts"]["complete"]
    for key in ("samples_read", "samples_written", "samples_skipped", "clips", "shards_written", "bytes"):
        assert combined[key] == getattr(one, key), key


def test_a_shard_that_fails_is_listed_the_run_goes_on_and_a_rerun_retries_it(clips, codebook, tmp_path, capsys):
    out = tmp_path / "tokens"
    _tokenize(clips, codebook, out)
    reference = _tars(out)
    for index in (1, 3):  # two shards to redo: they go to a pool of two worker processes
        (out / schema.shard_name(index)).unlink()
        schema.stats_path(out / schema.shard_name(index)).unlink()
    blocker = schema.stats_path(out / schema.shard_name(1))
    blocker.mkdir()  # the shard's stats file cannot be written: a failure no sample check foresaw
    code = cli.main(["shards", "tokenize", "--clips", str(clips), "--codebook", str(codebook), "--out", str(out),
                        "--workers", "2", "--no-progress"])
    assert code == 1 and "1 shards FAILED" in capsys.readouterr().out
    summary = json.loads((out / schema.SUMMARY_FILE).read_text())
    assert (summary["shards_failed"], summary["shards_written"], summary["shards_kept"]) == (1, 4, 3)
    (line,) = [json.loads(x) for x in (out / schema.ERRORS_FILE).read_text().splitlines()]
    assert line["input"].endswith("shard-000001.tar") and "IsADirectoryError" in line["reason"]
    assert "re-run to retry it" in line["reason"]
    blocker.rmdir()
    retried = _tokenize(clips, codebook, out)
    assert (retried.shards_failed, retried.shards_kept, retried.shards_written) == (0, 4, 5)
    assert _tars(out) == reference


def test_bf16_tokens_are_checked_against_fp32(clips, codebook, tmp_path):
    summary = _tokenize(clips, codebook, tmp_path / "bf16", precision="bf16", batch_size=4)
    assert summary.precision == "bf16"
    first_batches = [min(4, reader.read_stats(url)["clips"]) for url in reader.resolve_shards(clips)]
    assert summary.fp32_check_clips == sum(first_batches)
    assert summary.fp32_check_share == pytest.approx(summary.fp32_check_differ / summary.fp32_check_clips)
    assert json.loads((tmp_path / "bf16" / schema.RUN_FILE).read_text())["arguments"]["precision"] == "bf16"


# ---------------------------------------------------------------------------------------------------
# Training on a folder written by parts


@pytest.mark.slow
def test_training_runs_on_token_shards_written_by_parts(clips, codebook, tmp_path):
    for k in range(2):
        _tokenize(clips, codebook, tmp_path / "train", part=f"{k}/2")
    run = tmp_path / "run"
    command = [sys.executable, "-m", "videobert.trainer.train", "--config", "debug"] + [f"--{s}" for s in (
        f"run_dir={run}",
        f"data.train={tmp_path / 'train'}", f"data.codebook={codebook}", f"deepspeed_config={ROOT / 'ds_config.json'}",
        "model.init=", "model.preset=tiny", "data.text_model=minilm", "data.num_workers=0", "logging.every_steps=1",
        "logging.progress=false", "max_steps=2", "optim.micro_batch_size=4", "checkpoint.every_steps=100",
    )]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [json.loads(x) for x in RunFolder(run).metrics.read_text().splitlines() if x.strip()]
    assert {m["step"] for m in lines if m["split"] == "train"} == {1, 2}


@pytest.mark.gpu
def test_tokenize_on_a_gpu_runs_bf16_and_states_its_share_of_other_words(clips, codebook, tmp_path):
    fp32 = _tokenize(clips, codebook, tmp_path / "fp32", device="cuda", precision="fp32")
    bf16 = _tokenize(clips, codebook, tmp_path / "bf16", device="cuda", part="0/1")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16") and bf16.fp32_check_clips > 0
    a = {s.key: s.tokens for s in reader.iter_samples(reader.resolve_shards(tmp_path / "fp32"))}
    b = {s.key: s.tokens for s in reader.iter_samples(reader.resolve_shards(tmp_path / "bf16"))}
    differ = sum(int((a[k] != b[k]).sum()) for k in a) / sum(len(a[k]) for k in a)
    assert differ <= 0.5 and bf16.fp32_check_share <= 0.5  # the share the summary states, and the whole run's
