"""The command line: documented command lines parse to the configs they always did; help stays light."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from videobert.shards import fit_codebook, prepare
from videobert.shards import tokenize_clips as tokenize
from videobert.shards.fit_codebook import FitCodebookConfig
from videobert.shards.options import Flag, add_config_arguments, config_from_args, field_docs
from videobert.shards.prepare import PrepareConfig, available_cpus
from videobert.shards.synthetic import corpus as synth
from videobert.shards.synthetic.corpus import SynthConfig
from videobert.shards.tokenize_clips import TokenizeConfig

ROOT = Path(__file__).resolve().parents[1]


def _parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def test_readme_prepare_line():
    args = _parse(prepare, "--videos /data/videos --transcripts /data/caption.json --out /data/clips --fps 20 "
                           "--size 224 --clip-len 30 --workers 32".split())
    assert config_from_args(PrepareConfig, args) == PrepareConfig(
        videos=("/data/videos",), transcripts=("/data/caption.json",), out="/data/clips", fps=20.0, size=224,
        clip_len=30, workers=32)


def test_prepare_sizes_repeats_and_switches():
    args = _parse(prepare, "--videos a.mp4 b --videos c --transcripts t.vtt --out o --max-bytes 500M --crop none "
                           "--min-last-clip 10 --no-progress --overwrite --transcript-format vtt".split())
    config = config_from_args(PrepareConfig, args)
    assert config == PrepareConfig(videos=("a.mp4", "b", "c"), transcripts=("t.vtt",), out="o", max_bytes=500 << 20,
                                   crop="none", min_last_clip=10, progress=False, overwrite=True,
                                   transcript_format="vtt", workers=available_cpus())
    assert (config.max_samples, config.max_bytes) == (10_000, 524288000)
    with pytest.raises(SystemExit):
        _parse(prepare, "--videos a --transcripts t --out o --max-bytes lots".split())
    with pytest.raises(SystemExit):
        _parse(prepare, "--videos a --transcripts t --out o --transcript-format docx".split())


def test_a_list_option_with_a_default_replaces_it_when_given():
    @dataclasses.dataclass(frozen=True)
    class Rows:
        rows: tuple[str, ...] = ("a", "b", "c")
        files: tuple[str, ...] = ()

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Rows, {})
    read = [config_from_args(Rows, parser.parse_args(argv.split())) for argv in
            ("", "--rows b", "--rows b c", "--rows c --rows a --files x --files y")]
    assert [r.rows for r in read] == [("a", "b", "c"), ("b",), ("b", "c"), ("c", "a")]
    assert read[3].files == ("x", "y") and read[0].files == ()
    again = config_from_args(Rows, parser.parse_args([]))  # a second parse starts from the default again
    assert again.rows == ("a", "b", "c")


def test_readme_fit_codebook_and_tokenize_lines():
    args = _parse(fit_codebook, "--clips /data/clips --out /data/codebook --encoder s3d --encoder-weights "
                                "/models/s3d_kinetics400.pt --depth 4 --branching 12".split())
    assert config_from_args(FitCodebookConfig, args) == FitCodebookConfig(
        clips=("/data/clips",), out="/data/codebook", encoder="s3d", encoder_weights="/models/s3d_kinetics400.pt")
    args = _parse(tokenize, "--clips /data/clips --codebook /data/codebook --out /data/tokens --encoder-weights "
                            "/models/s3d_kinetics400.pt".split())
    assert config_from_args(TokenizeConfig, args) == TokenizeConfig(
        clips=("/data/clips",), codebook="/data/codebook", out="/data/tokens", encoder_weights="/models/s3d_kinetics400.pt")


def test_synth_pairs():
    args = _parse(synth, "--out c --train-videos 3 --segments 2 4 --segment-seconds 2 3".split())
    assert config_from_args(SynthConfig, args) == SynthConfig(train_videos=3, segments=(2, 4), segment_seconds=(2.0, 3.0))
    assert (args.out, args.overwrite) == ("c", False)


def test_eval_lines_keep_their_special_forms():
    from videobert.trainer.evaluation import evaluate
    from videobert.trainer.evaluation.evaluate import EvalConfig

    doc = _parse(evaluate, "runs/demo/train --zero-shot runs/demo/tokens/eval --labels a.json --vocabulary v.json "
                           "--clips runs/demo/clips/eval".split())
    assert config_from_args(EvalConfig, doc) == EvalConfig(
        model="runs/demo/train", zero_shot=("runs/demo/tokens/eval",), labels="a.json", vocabulary="v.json",
        clips=("runs/demo/clips/eval",))
    skip = config_from_args(EvalConfig, _parse(evaluate, "m --prompt a --prompt b --heldout --max-seq-len 96".split()))
    assert (skip.prompts, skip.heldout, skip.max_seq_len) == (("a", "b"), (), 96)
    given = config_from_args(EvalConfig, _parse(evaluate, "m --heldout x y --seed 3 --video-to-text-samples 2".split()))
    assert (given.heldout, given.seed, given.video_to_text_samples) == (("x", "y"), 3, 2)


@pytest.mark.parametrize("config_class", [PrepareConfig, FitCodebookConfig, TokenizeConfig, SynthConfig])
def test_every_field_is_an_option_with_its_docstring_as_help(config_class):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, config_class)
    options = {a.dest: a for a in parser._actions}
    docs = field_docs(config_class)
    for f in dataclasses.fields(config_class):
        assert f.name in options, f.name
        assert docs.get(f.name), f"{config_class.__name__}.{f.name} has no docstring"
        first_words = docs[f.name].replace("``", "").rstrip(".").split()[1:3]
        assert " ".join(first_words) in options[f.name].help, (f.name, options[f.name].help)


def test_options_of_every_shape():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Shapes:
        name: str
        """Required."""
        count: int | None = None
        """Maybe a number."""
        ratio: float = 0.5
        """A share, 100 % at most."""
        quiet: bool = False
        """Say less."""
        colour: bool = True
        """Use colour."""
        pair: tuple[int, int] = (1, 2)
        """Two numbers."""
        paths: tuple[str, ...] = ()
        """Several paths."""
        words: tuple[str, ...] = ()
        """Repeated one by one."""

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Shapes, {"words": Flag(name="--word", action="append")})
    assert "100 %" in parser.format_help()
    parsed = config_from_args(Shapes, parser.parse_args(
        "--name n --count 3 --ratio 0.25 --quiet --no-colour --pair 5 6 --paths a b --paths c --word x --word y".split()))
    assert parsed == Shapes(name="n", count=3, ratio=0.25, quiet=True, colour=False, pair=(5, 6), paths=("a", "b", "c"),
                            words=("x", "y"))
    assert config_from_args(Shapes, parser.parse_args(["--name", "n"])) == Shapes(name="n")
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --name is required


def test_help_imports_neither_torch_nor_deepspeed(tmp_path):
    probe = (
        "import sys\n"
        "from videobert.trainer.cli import main\n"
        "for argv in (['--help'], ['shards', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, e.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'deepspeed', 'transformers', 'numpy'))\n"
        "print('HEAVY', heavy)\n"
    )
    # outside the repository: the installed package, not the folders of this checkout, answers
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    assert "prepare" in out.stdout and "tokenize" in out.stdout and "demo" in out.stdout


def test_each_command_builds_only_its_own_options():
    from videobert.trainer import cli

    parser = cli.build_parser(["shards", "prepare", "--help"])
    stages = next(a for a in parser._subparsers._group_actions[0].choices["shards"]._actions
                  if isinstance(a, argparse._SubParsersAction))
    assert any("--videos" in a.option_strings for a in stages.choices["prepare"]._actions)
    assert not any("--codebook" in a.option_strings for a in stages.choices["tokenize"]._actions)
    args = cli.build_parser(["demo", "--steps", "3"]).parse_args(["demo", "--steps", "3"])
    assert args.steps == 3 and args._run.__module__ == "videobert.trainer.demo"


def test_documented_commands_in_the_readme_parse():
    """Every `videobert ...` command of the README's bash blocks is accepted by the parser."""
    from videobert.trainer import cli

    blocks = (ROOT / "README.md").read_text().split("```bash\n")[1:]
    commands = []
    for block in blocks:
        for command in block.split("```")[0].replace("\\\n", " ").splitlines():
            words = command.split("#")[0].split()
            if words[:1] == ["videobert"]:
                commands.append(words[1:])
    assert len(commands) >= 3, commands
    for argv in commands:
        args = cli.build_parser(argv).parse_args(argv)
        assert callable(args._run), argv
