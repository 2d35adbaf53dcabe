"""``videobert shards ...``: the stages from raw video to shards.

Each stage is a module exposing ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

STAGES: dict[str, str] = {
    "synth": "shards.synth",
    "prepare": "shards.prepare",
    "inspect": "shards.inspect",
    "fit-codebook": "shards.fit_codebook",
    "tokenize": "shards.tokenize",
}


def add_stage_parsers(subparsers: argparse._SubParsersAction) -> None:
    for name, module_name in STAGES.items():
        module = importlib.import_module(module_name)
        parser = subparsers.add_parser(
            name, help=module.HELP, description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(parser)
        parser.set_defaults(_run=module.run)


def build_parser(prog: str = "videobert shards") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stage_parsers(parser.add_subparsers(dest="stage", required=True, metavar="STAGE"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
