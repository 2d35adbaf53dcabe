"""videobert: pretrain VideoBERT from raw videos.

  videobert shards STAGE ...   raw videos and transcripts -> clip shards -> codebook -> token shards
  videobert train ...          pretrain on shards with DeepSpeed ZeRO-3 (resumable)
  videobert eval ...           zero-shot classification, alignment, masked-token accuracy, report
  videobert export ...         a checkpoint -> a transformers BertForPreTraining directory
  videobert demo ...           all of the above on the built-in synthetic corpus
"""

from __future__ import annotations

import argparse
import importlib
import sys

from shards import cli as shards_cli

COMMANDS: dict[str, str] = {
    "train": "trainer.train",
    "eval": "trainer.evaluate",
    "export": "trainer.export",
    "demo": "trainer.demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videobert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    shards = commands.add_parser(
        "shards", help="prepare, tokenize and inspect shards", description=shards_cli.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    shards_cli.add_stage_parsers(shards.add_subparsers(dest="stage", required=True, metavar="STAGE"))
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=module.HELP, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
