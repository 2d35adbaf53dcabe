"""``videobert shards ...``: the stages from raw video to shards.

Each stage is a module exposing ``add_arguments(parser)`` and ``run(args) -> int``; its docstring is
its ``--help`` description. Only the stage named on the command line is imported (``trainer.cli``
says why); ``trainer.cli.main`` is the one entry point (``python -m videobert.trainer.cli shards STAGE``
under a launcher).
"""

from __future__ import annotations

import argparse
import importlib
from typing import Sequence

STAGES: dict[str, tuple[str, str]] = {
    "synth": ("videobert.shards.synthetic.corpus", "render the built-in synthetic corpus (H.264 videos, transcripts, labels)"),
    "prepare": ("videobert.shards.prepare", "videos + transcripts -> clip shards (one sample per caption segment), resumable"),
    "inspect": ("videobert.shards.inspect_shards", "show shards' schema, counts and one sample; --frames saves a PNG of its clips"),
    "fit-codebook": ("videobert.shards.fit_codebook", "clip shards -> encoder features -> hierarchical k-means codebook file"),
    "tokenize": ("videobert.shards.tokenize_clips", "clip shards -> token shards (visual-word ids per clip), parallel and resumable"),
    "tokenize-videos": ("videobert.shards.tokenize_videos", "videos + transcripts + codebook -> token shards in one pass (no clip shards), resumable"),
    "status": ("videobert.shards.status", "a stage run in parts (--part I/N): parts missing or unfinished, combined summary"),
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
