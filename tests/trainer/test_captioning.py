"""Captioning from frozen features: the paper's feature template, the captioner, its resume, probes,
and ``videobert caption`` end to end on the evaluation corpus (``eval_corpus``) with the tiny preset."""

from __future__ import annotations

import json
from pathlib import Path

import eval_corpus
import numpy as np
import pytest
import tiny_videobert
import torch
from PIL import Image

from videobert.trainer import cli
from videobert.trainer.evaluation.captioning.captioner import EOS, CaptionWords, beam_decode
from videobert.trainer.evaluation.captioning.config import CaptionConfig
from videobert.trainer.evaluation.captioning.features import (
    CAPTION_TEMPLATE, feature_prompt, prompt_rows, videobert_features,
)
from videobert.trainer.evaluation.captioning.probes import ProbeLabels, run_probes
from videobert.trainer.evaluation.captioning.rows import decode
from videobert.trainer.evaluation.captioning.training import CaptionerSettings, CaptionTrainingError, train_captioner
from videobert.trainer.evaluation.intervals import wilson

pytestmark = pytest.mark.slow

SMALL = CaptionerSettings(width=32, heads=2, encoder_layers=1, decoder_layers=1, ffn=64, steps=200, lr=3e-3,
                          warmup_steps=10, batch_size=32, checkpoint_every=100, log_every=50, seed=0)
VERBS = ("stir", "shake", "roll", "flip", "lift", "slice")
NOUNS = ("tomato", "lemon", "bread", "cheese")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The evaluation corpus plus clip shards and labels of its training segments (for captioners)."""
    root = tmp_path_factory.mktemp("caption-corpus")
    made = eval_corpus.write_corpus(root)
    train, held = eval_corpus.plan(48, 4, seed=0)[:96], eval_corpus.plan(8, 4, seed=1)
    eval_corpus.write_shards(root / "train-clips", train, 2)
    (root / "labels").mkdir()
    labels, _ = eval_corpus.write_labels(root / "labels", train + held)
    return made | {"train_clips": root / "train-clips", "all_labels": labels}


@pytest.fixture(scope="module")
def untrained(corpus, tmp_path_factory) -> Path:
    return tiny_videobert.exported_tiny(corpus, tmp_path_factory.mktemp("untrained") / "export", steps=0)


def test_the_feature_template_and_where_its_masks_are(minilm_dir):
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(str(minilm_dir))
    prompt = feature_prompt(tokenizer, tokenizer.mask_token_id)
    assert tokenizer.convert_ids_to_tokens(list(prompt.text_ids)) == [
        "now", "let", "'", "s", "[MASK]", "the", "[MASK]", "to", "the", "[MASK]", ",", "and", "then", "[MASK]",
        "the", "[MASK]", "."]
    assert prompt.mask_at == (4, 6, 9, 13, 15)


def test_videobert_features_are_the_means_at_the_video_and_at_the_masks(untrained):
    from videobert.trainer.evaluation.load import load_model

    loaded = load_model(untrained)
    vocab, model = loaded.vocab, loaded.model
    prompt = feature_prompt(loaded.tokenizer, vocab.mask_id, CAPTION_TEMPLATE)
    videos = [np.array([3, 1, 4]), np.array([15]), np.array([9, 2])]
    batched = videobert_features(model, vocab, prompt, videos, max_seq_len=64, batch_size=3)  # padded together
    assert batched.shape == (3, 2 * model.config.hidden_size)
    for video, row in zip(videos, batched):
        ids, types, kept = prompt_rows(vocab, prompt, video, 64)
        assert ids[len(prompt.text_ids) + 1] == vocab.video_sep_id and kept == len(video)
        with torch.no_grad():
            hidden = model.encode(torch.tensor([ids]), torch.tensor([types]))[0]  # alone, no padding
        first = len(prompt.text_ids) + 2
        at_video = hidden[first : first + len(video)].mean(dim=0)
        at_masks = hidden[[1 + m for m in prompt.mask_at]].mean(dim=0)
        np.testing.assert_allclose(row, torch.cat([at_video, at_masks]).numpy(), rtol=1e-4, atol=1e-5)


def _planted(n: int, seed: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Features whose first slot names the verb (one-hot plus noise) and second the noun, and captions."""
    rng = np.random.default_rng(seed)
    verbs, nouns = rng.integers(len(VERBS), size=n), rng.integers(len(NOUNS), size=n)
    features = np.concatenate([np.eye(8)[verbs], np.eye(6)[nouns]], axis=1) + 0.3 * rng.standard_normal((n, 14))
    captions = [f"{VERBS[v]} the {NOUNS[o]} on the board" for v, o in zip(verbs, nouns)]
    return features.astype(np.float32), captions, verbs


def test_a_captioner_names_the_verb_only_when_it_reads_the_features(tmp_path):
    train_x, train_captions, _ = _planted(240, seed=0)
    test_x, _, test_verbs = _planted(60, seed=1)
    words = CaptionWords.from_captions(train_captions)
    decoding = CaptionConfig(model="unused", decoding="greedy")
    named = {}
    for row, slots in (("with features", [8, 6]), ("without", [])):
        x, held = (train_x, test_x) if slots else (train_x[:, :0], test_x[:, :0])
        model = train_captioner(row, 0, x, slots, train_captions, words, SMALL, tmp_path / row, {})
        captions = decode(model, words, held, decoding)
        named[row] = np.mean([c.split()[:1] == [VERBS[v]] for c, v in zip(captions, test_verbs)])
    assert named["with features"] >= 0.9, named
    assert named["without"] <= 0.35, named  # one constant sentence: the most frequent verb at best


def test_beam_search_captions_a_batch_as_it_captions_each_segment_alone(tmp_path):
    """One decoder pass per step serves every segment of a batch; each segment keeps its own beam and
    stops on its own, so its caption is the one it gets decoded alone, whatever else is in the batch."""
    train_x, train_captions, _ = _planted(160, seed=4)
    # Captions of several lengths, so that segments finish at different steps of the batch's search.
    train_captions = [c if i % 3 else c.replace(" on the board", "") for i, c in enumerate(train_captions)]
    held, _, _ = _planted(40, seed=5)
    words = CaptionWords.from_captions(train_captions)
    settings = CaptionerSettings(**{**SMALL.__dict__, "steps": 60})
    model = train_captioner("row", 0, train_x, [8, 6], train_captions, words, settings, tmp_path / "row", {}).eval()
    features = torch.from_numpy(held)
    batch = beam_decode(model, features, beam=3)
    alone = [beam_decode(model, features[i : i + 1], beam=3)[0] for i in range(len(held))]
    assert batch == alone
    assert len({len(ids) for ids in batch}) > 1, [words.decode(ids) for ids in batch]
    assert all(len(ids) > 1 and ids.index(EOS) == len(ids) - 1 for ids in batch)  # words, then the end


class _StopAt:
    """A TensorBoard stand-in that stops training at a given step (as a killed process would)."""

    def __init__(self, step: int):
        self.step = step

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if step == self.step:
            raise KeyboardInterrupt


def test_a_resumed_captioner_takes_the_steps_of_an_uninterrupted_one(tmp_path):
    x, captions, _ = _planted(64, seed=2)
    words = CaptionWords.from_captions(captions)
    settings = CaptionerSettings(**{**SMALL.__dict__, "steps": 30, "checkpoint_every": 10, "log_every": 10})
    straight = train_captioner("row", 1, x, [8, 6], captions, words, settings, tmp_path / "straight", {"v": 1})
    with pytest.raises(KeyboardInterrupt):  # after the step-10 checkpoint, before step 20's
        train_captioner("row", 1, x, [8, 6], captions, words, settings, tmp_path / "resumed", {"v": 1}, writer=_StopAt(20))
    assert [p.name for p in (tmp_path / "resumed").iterdir()] == ["step-10"]
    resumed = train_captioner("row", 1, x, [8, 6], captions, words, settings, tmp_path / "resumed", {"v": 1})
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(CaptionTrainingError, match="trained with other identity"):
        train_captioner("row", 1, x, [8, 6], captions, words, settings, tmp_path / "resumed", {"v": 2})
    # Another captioner of the same row starts from its own weights and batches; the same one again is the same.
    other = train_captioner("row", 1, x, [8, 6], captions, words, settings, tmp_path / "other", {"v": 1}, member=1)
    assert not torch.equal(other.projections[0].weight, straight.projections[0].weight)
    with pytest.raises(CaptionTrainingError, match="trained with other member"):
        train_captioner("row", 1, x, [8, 6], captions, words, settings, tmp_path / "other", {"v": 1})


def test_probes_read_a_planted_label():
    x, _, verbs = _planted(200, seed=3)
    noise = np.random.default_rng(4).standard_normal(x.shape).astype(np.float32)
    train = ProbeLabels(rows=np.arange(150), classes={"verb": verbs[:150], "noun": verbs[:150] % 2}, unlabelled=0)
    test = ProbeLabels(rows=np.arange(50), classes={"verb": verbs[150:], "noun": verbs[150:] % 2}, unlabelled=0)
    out = run_probes({"planted": (x[:150], x[150:]), "noise": (noise[:150], noise[150:])}, train, test)
    assert out["planted"]["verb"] >= 0.85 and out["noise"]["verb"] <= 0.45
    assert out["constant"]["verb"] == pytest.approx(np.bincount(verbs[150:]).max() / 50)
    for accuracy in out.values():  # Wilson over the 50 held-out segments
        assert accuracy["verb_ci"] == pytest.approx(list(wilson(round(accuracy["verb"] * 50), 50)))


def _caption_args(corpus, model: Path, out: Path, *extra: str) -> list[str]:
    return ["caption", str(model), "--out", str(out), "--train", str(corpus["train_clips"]), "--heldout", str(corpus["clips"]),
            "--codebook", str(corpus["codebook"]), "--labels", str(corpus["all_labels"]), "--vocabulary",
            str(corpus["vocabulary"]), "--clips", str(corpus["clips"]), "--width", "32", "--heads", "2",
            "--encoder-layers", "1", "--decoder-layers", "1", "--ffn", "64", "--steps", "20", "--checkpoint-every", "10",
            "--warmup-steps", "5", "--batch-size", "16", "--examples", "3", "--no-java", "--no-progress", *extra]


@pytest.fixture(scope="module")
def captioned(corpus, untrained, tmp_path_factory) -> tuple[Path, dict, str]:
    """One ``videobert caption`` run: its folder, its results as first written, what it printed."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("captioned") / "caption"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(_caption_args(corpus, untrained, out)) == 0
    return out, json.loads((out / "results.json").read_text()), printed.getvalue()


def test_the_caption_command_writes_its_table_and_resumes(corpus, untrained, captioned, capsys):
    out, results, printed = captioned
    assert "VideoBERT + clip encoder features" in printed and "needs Java" in printed
    assert list(results["rows"]) == ["no_video", "encoder", "videobert", "videobert_encoder"]
    assert [(o["better"], o["than"]) for o in results["order"]] == [("videobert_encoder", "encoder"), ("videobert", "no_video")]
    for o in results["order"]:
        low, high = o["difference_ci"]
        assert low <= o["difference"] <= high and o["verdict"] == ("holds" if low > 0 else "reversed" if high < 0 else "unresolved")
        assert o["difference"] == pytest.approx(results["rows"][o["better"]]["cider"] - results["rows"][o["than"]]["cider"])
    assert "Table 3's order" in printed and "VideoBERT + clip encoder features - clip encoder features: CIDEr" in printed
    assert results["train_segments"] == 96 and results["heldout_segments"] == 32
    assert results["captioners"] == 3  # the default: each row is the mean of three captioners
    for scores in results["rows"].values():
        assert 0 <= scores["bleu4"] <= 1 and scores["cider"] >= 0 and scores["meteor"] is None
        assert scores["captioners"] == 3 and scores["cider"] == pytest.approx(np.mean(scores["cider_by_captioner"]))
    for o in results["order"]:
        assert o["captioners"] == [3, 3] and len(o["difference_by_captioner"]) == 3
    for row in results["rows"]:
        lines = [json.loads(x) for x in (out / "rows" / row / "captions.jsonl").read_text().splitlines()]
        assert len(lines) == 32 and all(line["reference"].startswith("now let me show you how to") for line in lines)
        assert all(len(line["captions"]) == 3 and line["caption"] == line["captions"][0] for line in lines)
    assert "CIDEr by captioner" in printed and "captioner by captioner" in printed
    probes = results["probes"]
    assert set(probes["accuracy"]) == {"encoder", "videobert", "constant"} and probes["heldout_segments"] == 32
    report = (out / "report.md").read_text()
    for part in ("## Captioning from frozen features", "| VideoBERT features |", "Table 3's order", "needs Java", "### Linear probes",
                 "![captioned examples](caption_examples.png)"):
        assert part in report, part
    with Image.open(out / "caption_examples.png") as image:
        assert image.format == "PNG" and image.size[1] > 3 * 64
        image.verify()

    markers = {p: p.read_text() for p in out.glob("rows/*/captioner-*/checkpoints/step-*/COMPLETE")}
    assert len(markers) == 12
    assert cli.main(_caption_args(corpus, untrained, out)) == 0  # a rerun: nothing is trained again
    again = json.loads((out / "results.json").read_text())
    assert again["features_reused"] and again["rows"] == results["rows"]
    assert {p: p.read_text() for p in out.glob("rows/*/captioner-*/checkpoints/step-*/COMPLETE")} == markers
    # A fourth captioner per row: the three trained ones are reused, only the new one trains.
    assert cli.main(_caption_args(corpus, untrained, out, "--captioners", "4", "--rows", "encoder")) == 0
    four = json.loads((out / "results.json").read_text())["rows"]["encoder"]
    assert four["cider_by_captioner"][:3] == results["rows"]["encoder"]["cider_by_captioner"]
    now = {p: p.read_text() for p in out.glob("rows/*/captioner-*/checkpoints/step-*/COMPLETE")}
    assert {p: now[p] for p in markers} == markers and sorted(set(now) - set(markers)) == [
        out / "rows" / "encoder" / "captioner-3" / "checkpoints" / "step-20" / "COMPLETE"]
    capsys.readouterr()
    assert cli.main(_caption_args(corpus, untrained, out, "--lr", "0.01")) == 2
    assert "trained with other" in capsys.readouterr().err
    assert cli.main(_caption_args(corpus, untrained, out, "--lr", "0.01", "--overwrite", "--rows", "no_video")) == 0


def test_two_processes_share_the_rows_and_write_the_table_of_one(corpus, untrained, captioned, tmp_path):
    import os
    import subprocess
    import sys

    _, one, _ = captioned
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "videobert.trainer.evaluation.captioning.command", *_caption_args(corpus, untrained, tmp_path / "two")[1:]]
    done = subprocess.run(command, cwd=tiny_videobert.ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["rows"] == one["rows"] and two["probes"] == one["probes"]
    trained = sorted(p.parent.parent.name for p in (tmp_path / "two").glob("rows/*/captioner-*/checkpoints"))
    assert trained == sorted(3 * list(one["rows"]))


def test_inputs_captioning_cannot_use_are_refused(corpus, untrained, tmp_path, capsys):
    assert cli.main(_caption_args(corpus, untrained, tmp_path, "--rows", "s3d")) == 2
    assert "unknown row 's3d'" in capsys.readouterr().err
    args = [a for a in _caption_args(corpus, untrained, tmp_path) if a != str(corpus["all_labels"]) and a != "--labels"]
    assert cli.main(args) == 2
    assert "--labels and --vocabulary" in capsys.readouterr().err
