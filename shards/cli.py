"""``videobert shards ...``: the stages from raw video to shards.

Each stage is a module exposing ``add_arguments(parser)`` and ``run(args) -> int``; its docstring is
its ``--help`` description. Only the stage named on the command line is imported (``trainer.cli``
says why).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

STAGES: dict[str, tuple[str, str]] = {
    "synth": ("shards.synth", "render the built-in synthetic corpus (H.264 videos, transcripts, labels)"),
    "prepare": ("shards.prepare", "videos + transcripts -> clip shards (one sample per caption segment), resumable"),
    "inspect": ("shards.inspect", "show shards' schema, counts and one sample; --frames saves a PNG of its clips"),
    "fit-codebook": ("shards.fit_codebook", "clip shards -> encoder features -> hierarchical k-means codebook file"),
    "tokenize": ("shards.tokenize", "clip shards -> token shards (visual-word ids per clip), parallel and resumable"),
    "status": ("shards.parts", "a stage run in parts (--part I/N): parts missing or unfinished, combined summary"),
}
"""Stage name -> (module, one-line help)."""


def add_command_parsers(subparsers: argparse._SubParsersAction, commands: dict[str, tuple[str, str]],
                        chosen: str | None) -> None:
    """A sub-parser per command; only ``chosen``'s module is imported and given its options."""
    for name, (module_name, help_line) in commands.items():
        parser = subparsers.add_parser(name, help=help_line, formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == chosen:
            module = importlib.import_module(module_name)
            parser.description = module.__doc__
            module.add_arguments(parser)
            parser.set_defaults(_run=module.run)


def first_positional(argv: Sequence[str]) -> str | None:
    """The first word of ``argv`` that is not an option (the command it names)."""
    return next((a for a in argv if not a.startswith("-")), None)


def add_stage_parsers(subparsers: argparse._SubParsersAction, argv: Sequence[str]) -> None:
    add_command_parsers(subparsers, STAGES, first_positional(argv))


def build_parser(argv: Sequence[str], prog: str = "videobert shards") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stage_parsers(parser.add_subparsers(dest="stage", required=True, metavar="STAGE"), argv)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
