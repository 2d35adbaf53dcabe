"""``videobert eval`` end to end on a tiny labelled corpus (``eval_corpus``), with models trained here.

The zero-shot model is the tiny preset trained in this process for a few hundred steps, on the
corpus's token shards through the real data stream, example builder and model, then written as an
exported transformers directory. Its objectives keep the video-token loss off and the alignment loss
small: in runs this short, both pull the rows of the visual words (tied between input and output)
towards each other, and the masked text never learns to read the video.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import eval_corpus
import numpy as np
import pytest
import tiny_videobert
import torch
import yaml
from PIL import Image

from videobert.shards import reader
from videobert.trainer import cli
from videobert.trainer.evaluation.evaluate import EvalConfig, evaluate
from videobert.trainer.evaluation.load import ModelLoadError, load_model
from videobert.trainer.run_folder import RunFolder
from videobert.trainer.run_folder import EXPORT_CONFIG, EXPORT_INFO

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return eval_corpus.write_corpus(tmp_path_factory.mktemp("eval-corpus"))


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> Path:
    """The tiny preset trained for real in this process, exported (see module doc)."""
    return tiny_videobert.exported_tiny(corpus, tmp_path_factory.mktemp("trained") / "export", steps=300)


def _eval_args(corpus, model: Path, out: Path) -> list[str]:
    return [str(model), "--out", str(out), "--zero-shot", str(corpus["heldout"]), "--labels", str(corpus["labels"]),
            "--vocabulary", str(corpus["vocabulary"]), "--heldout", str(corpus["heldout"]), "--clips", str(corpus["clips"]),
            "--codebook", str(corpus["codebook"]), "--batch-size", "8"]


@pytest.fixture(scope="module")
def evaluated(corpus, trained, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("report")
    assert cli.main(["eval", *_eval_args(corpus, trained, out)]) == 0
    return json.loads((out / "results.json").read_text()) | {"out": str(out)}


def test_cross_modal_beats_the_language_prior(evaluated):
    z = evaluated["zero_shot"]
    assert z["segments"] == 32
    records = [json.loads(x) for x in (Path(evaluated["out"]) / "zeroshot.jsonl").read_text().splitlines()]
    for slot, classes in (("verb", eval_corpus.VERBS), ("noun", eval_corpus.NOUNS)):
        cross, prior, chance = (z[f"{m}_{slot}_top1"] for m in ("cross_modal", "language_prior", "chance"))
        assert cross >= 2 * chance, (slot, z)
        assert cross >= prior + 0.3, (slot, z)
        # The per-segment rankings behind the figures: every class ranked once (top-5 of 4 classes is
        # all of them, so top-5 says nothing here), the reported top-1 is the share of first places, and
        # the true label sits at the top (mean 0-based rank under 0.5, where a blind guess averages 1.5).
        ranked = [r[f"predicted_{slot}s"] for r in records]
        assert all(sorted(r) == sorted(classes) for r in ranked)
        assert cross == pytest.approx(np.mean([r[f"predicted_{slot}s"][0] == r[slot] for r in records]))
        assert np.mean([r[f"predicted_{slot}s"].index(r[slot]) for r in records]) < 0.5, slot
    h = evaluated["heldout"]
    assert h["alignment_count"] > 0 and h["text_mlm_acc"] > h["text_mlm_chance"]
    # The alignment head is not asked to learn here (its weight is small and 300 steps are too few for
    # the tiny model to match captions to clips); its figures must still be well-formed: two targets per
    # held-out segment (its own video and another's), the chance line the majority label's share, the
    # accuracy and ROC-AUC in [0, 1].
    assert h["alignment_count"] == 2 * z["segments"], h
    assert 0.5 <= h["alignment_chance"] <= 1 and 0 <= h["alignment_acc"] <= 1 and 0 <= h["alignment_auc"] <= 1, h
    assert h["text_mlm_perplexity"] < h["text_mlm_perplexity_chance"], h
    # Each figure but the perplexities has its 95 % interval around it.
    for key in ("alignment_acc", "alignment_balanced_acc", "alignment_auc", "text_mlm_acc", "video_mlm_acc"):
        low, high = h[f"{key}_ci"]
        assert 0 <= low <= h[key] <= high <= 1, (key, h)
    assert h["alignment_balanced_acc_chance"] == 0.5 and "text_mlm_perplexity_ci" not in h
    low, high = z["cross_modal_verb_top1_ci"]
    assert low <= z["cross_modal_verb_top1"] <= high
    turn = evaluated["heldout_video_in_turn"]
    assert turn["neighbour_differs_targets"] == round(turn["targets"] * (1 - turn["neighbour_accuracy"]))
    assert turn["accuracy_ci"][0] <= turn["accuracy"] <= turn["accuracy_ci"][1]


def test_roc_auc_is_the_mann_whitney_statistic():
    """Checked against scikit-learn on scores with ties, and at its ends."""
    from sklearn.metrics import roc_auc_score

    from videobert.trainer.evaluation.heldout import roc_auc

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, 300) / 20.0  # many ties
    labels = rng.random(300) < 0.4
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc(labels.astype(float), labels) == 1.0 and roc_auc(-labels.astype(float), labels) == 0.0
    assert roc_auc(scores, np.ones(300, bool)) is None


def test_report_files_and_pictures(evaluated):
    out = Path(evaluated["out"])
    report = (out / "report.md").read_text()
    for heading in ("## Zero-shot action classification", "| cross-modal (with video) |", "## Held-out alignment",
                    "alignment ROC-AUC", "| alignment balanced accuracy |", "95 % intervals", "## Text to video",
                    "## Video to text"):
        assert heading in report
    pictures = ["zeroshot_confusion.png", "text_to_video.png", "video_to_text.png"]
    for name in pictures:
        assert f"]({name})" in report
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) > 50
            image.verify()
    assert len((out / "zeroshot.jsonl").read_text().splitlines()) == 32
    assert (out / "zeroshot_problems.jsonl").read_text() == ""
    rows = evaluated["text_to_video"]
    assert len(rows) == 4 and all(len(r["visual_words"]) == 4 for r in rows)
    assert all(0 <= v < 16 for r in rows for v in r["visual_words"])


def test_two_processes_give_the_numbers_of_one(corpus, trained, evaluated, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "videobert.trainer.evaluation.evaluate", *_eval_args(corpus, trained, tmp_path)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    two = json.loads((tmp_path / "results.json").read_text())
    assert two["model"]["processes"] == 2
    for part in ("zero_shot", "heldout"):
        for key, value in evaluated[part].items():
            if isinstance(value, (float, list)):  # a figure or its interval
                assert two[part][key] == pytest.approx(value, rel=1e-5, abs=1e-9), (part, key)
    ones = {r["key"] for r in map(json.loads, (Path(evaluated["out"]) / "zeroshot.jsonl").read_text().splitlines())}
    twos = {r["key"] for r in map(json.loads, (tmp_path / "zeroshot.jsonl").read_text().splitlines())}
    assert ones == twos


@pytest.fixture(scope="module")
def checkpoint_run(corpus, tmp_path_factory) -> Path:
    """A 4-step DeepSpeed run of the tiny preset with one checkpoint (its config names the held-out
    shards as two sources, one shard each)."""
    run = tmp_path_factory.mktemp("checkpoint-run") / "run"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    first, second = sorted(Path(corpus["heldout"]).glob("*.tar"))
    heldout = f"[{{path: {first}, name: first}}, {{path: {second}, name: second}}]"
    settings = [f"run_dir={run}", f"data.train={corpus['train']}", f"data.heldout={heldout}",
                f"data.codebook={corpus['codebook']}", f"deepspeed_config={ROOT / 'ds_config.json'}", "max_steps=4",
                "checkpoint.every_steps=4", "logging.every_steps=1", "logging.progress=false", "data.num_workers=0",
                *tiny_videobert.TRAINING]
    command = [sys.executable, "-m", "videobert.trainer.train", "--config", str(tiny_videobert.RECIPE),
               *(f"--{s}" for s in settings)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return run


def test_a_checkpoint_and_its_export_evaluate_alike(corpus, checkpoint_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(checkpoint_run, run)
    assert cli.main(["export", str(run), "--out", str(tmp_path / "export")]) == 0
    common = dict(zero_shot=(str(corpus["heldout"]),), labels=str(corpus["labels"]), vocabulary=str(corpus["vocabulary"]))
    from_run = evaluate(EvalConfig(model=str(run), **common))  # held-out shards and codebook from the run's config
    # The export carries the run's config: the same held-out shards and codebook by default.
    from_export = evaluate(EvalConfig(model=str(tmp_path / "export"), out=str(tmp_path / "export-report"), **common))
    assert from_run["model"]["step"] == from_export["model"]["step"] == 4
    # named held-out sources: the whole set and each source on its own, at the end of training and in eval
    at_end = json.loads(RunFolder(run).heldout.read_text())
    assert set(at_end["by_source"]) == set(from_run["heldout_by_source"]) == {"first", "second"}
    for figures in (at_end, from_run["heldout"] | {"by_source": from_run["heldout_by_source"]}):
        parts = figures["by_source"].values()
        assert sum(p["alignment_count"] for p in parts) == figures["alignment_count"] > 0
        assert all(p["text_mlm_count"] > 0 for p in parts)
    assert (from_export["heldout_by_source"]["first"]["alignment_auc"]
            == pytest.approx(from_run["heldout_by_source"]["first"]["alignment_auc"], abs=1e-6))
    assert "**second**" in (run / "report.md").read_text()
    for part in ("zero_shot", "heldout"):
        for key, value in from_run[part].items():
            if isinstance(value, float):
                assert from_export[part][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (part, key)
    # By default the report lands in the run folder, with the training curves from its TensorBoard events.
    assert Path(from_run["report"]) == run / "report.md"
    with Image.open(run / "curves.png") as image:
        image.verify()


def test_inputs_that_do_not_fit_are_refused_with_a_reason(corpus, trained, tmp_path, capsys):
    args = _eval_args(corpus, trained, tmp_path)
    without_labels = [a for a in args if a != str(corpus["labels"]) and a != "--labels"]
    assert cli.main(["eval", *without_labels]) == 2
    assert "--labels" in capsys.readouterr().err

    other = eval_corpus.write_codebook(tmp_path / "other.safetensors", seed=5)
    eval_corpus.write_shards(tmp_path / "other-tokens", eval_corpus.plan(2, 2, seed=1), 1, codebook_hash=other.hash)
    wrong = [str(tmp_path / "other-tokens") if a == str(corpus["heldout"]) else a for a in args]
    assert cli.main(["eval", *wrong]) == 2
    assert "codebook" in capsys.readouterr().err

    assert cli.main(["eval", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "neither a run folder" in capsys.readouterr().err


def test_unlabelled_and_unreadable_samples_are_listed(corpus, trained, tmp_path):
    labels = [json.loads(x) for x in corpus["labels"].read_text().splitlines()]
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(x) + "\n" for x in labels[4:]))
    shards = tmp_path / "shards"
    shutil.copytree(corpus["heldout"], shards)
    tar = shards / "shard-000001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])  # cut short: its tail is lost
    result = evaluate(EvalConfig(model=str(trained), out=str(tmp_path), zero_shot=(str(shards),),
                                 labels=str(tmp_path / "labels.jsonl"), vocabulary=str(corpus["vocabulary"]), heldout=()))
    summary = result["zero_shot_summary"]
    assert summary["unlabelled"] == 4 and summary["unreadable"] >= 1
    assert result["zero_shot"]["segments"] + summary["unlabelled"] == summary["read"] < 32
    problems = [json.loads(x) for x in (tmp_path / "zeroshot_problems.jsonl").read_text().splitlines()]
    assert sum("no labelled segment" in p["reason"] for p in problems) == 4
    assert any("truncated" in p["reason"] for p in problems)
    assert "heldout" not in result and np.isfinite(result["seconds"])


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_interrupted_export_leaves_the_previous_one_whole(checkpoint_run, tmp_path):
    out = tmp_path / "export"
    assert cli.main(["export", str(checkpoint_run), "--out", str(out)]) == 0
    before = _files(out)
    partial = tmp_path / ".export.partial"
    job = subprocess.Popen([sys.executable, "-m", "videobert.trainer.cli", "export", str(checkpoint_run), "--out", str(out)],
                           cwd=ROOT, env={**os.environ, "DS_ACCELERATOR": "cpu"}, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (partial / "config.json").exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    os.killpg(job.pid, signal.SIGKILL)  # while the new export is being written
    job.wait()
    assert job.returncode == -signal.SIGKILL, job.stderr.read().decode()[-2000:]
    assert partial.exists(), "the export was killed half-way"
    assert _files(out) == before, "the previous export is untouched"
    assert load_model(out).step == 4

    assert cli.main(["export", str(checkpoint_run), "--out", str(out)]) == 0  # a re-run finishes and tidies up
    assert not partial.exists() and _files(out) == before


def test_eval_reads_only_complete_safetensors_exports(trained, tmp_path, capsys):
    incomplete = tmp_path / "incomplete"
    shutil.copytree(trained, incomplete)
    (incomplete / EXPORT_INFO).unlink()
    with pytest.raises(ModelLoadError, match="not a complete VideoBERT export: it lacks videobert.json"):
        load_model(incomplete)

    pickled = tmp_path / "pickled"
    shutil.copytree(trained, pickled)
    from safetensors.torch import load_file

    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="safetensors only"):
        load_model(pickled)

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own files")
    capsys.readouterr()
    assert cli.main(["export", str(trained), "--out", str(tmp_path / "again")]) == 2
    assert "is already an exported directory" in capsys.readouterr().err
    loaded = load_model(trained)
    from videobert.trainer.export import write_export

    with pytest.raises(ModelLoadError, match="holds files that are not a VideoBERT export"):
        write_export(loaded.model, loaded.tokenizer, loaded.cfg, mine, step=1, checkpoint=None, codebook_hash="x")
    assert _files(mine) == {"notes.txt": b"my own files"}


def test_shard_specs_in_a_model_config_run_no_command(corpus, trained, tmp_path, capsys):
    """A ``pipe:`` held-out spec inside the export's own config is refused (naming the flag that allows
    it) and runs nothing; on the command line, or with the flag, it runs."""
    model = tmp_path / "model"
    shutil.copytree(trained, model)
    marker = tmp_path / "ran"
    shard = reader.resolve_shards(corpus["heldout"])[0]
    spec = f"pipe:touch {marker} && cat {shard}"
    config = yaml.safe_load((model / EXPORT_CONFIG).read_text())
    config["data"]["heldout"] = [spec]
    (model / EXPORT_CONFIG).write_text(yaml.safe_dump(config))
    common = [str(model), "--codebook", str(corpus["codebook"]), "--batch-size", "8"]

    assert cli.main(["eval", *common, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert str(model / EXPORT_CONFIG) in err and "--trust-model-config" in err and "--heldout SHARDS" in err
    assert not marker.exists(), "nothing ran"

    assert cli.main(["eval", *common, "--out", str(tmp_path / "trusted"), "--trust-model-config"]) == 0
    assert marker.exists()
    marker.unlink()
    assert cli.main(["eval", *common, "--out", str(tmp_path / "mine"), "--heldout", spec]) == 0  # the user's own
    assert marker.exists()
    results = json.loads((tmp_path / "mine" / "results.json").read_text())
    assert results["heldout"]["alignment_count"] > 0
