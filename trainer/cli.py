"""videobert: pretrain VideoBERT from raw videos.

  videobert shards STAGE ...   raw videos and transcripts -> clip shards -> codebook -> token shards
  videobert train ...          pretrain on shards with DeepSpeed ZeRO-3 (resumable)
  videobert eval ...           zero-shot classification, alignment, masked-token accuracy, report
  videobert caption ...        captioning from frozen VideoBERT features, linear probes
  videobert export ...         a checkpoint -> a transformers BertForPreTraining directory
  videobert demo ...           all of the above on the built-in synthetic corpus
"""

# Heavy imports are deferred. torch (which loads its distributed stack with it), DeepSpeed and
# transformers take seconds to import, so the command line imports only the module of the command
# it runs; those modules import torch at their top (they all need it), DeepSpeed only through
# ``trainer.distributed.import_deepspeed`` where an engine or a checkpoint is touched, and the
# optional parts (ffmpeg, plotting, TensorBoard) inside the functions that use them. `videobert
# --help` and `videobert shards --help` therefore import none of them.

from __future__ import annotations

import argparse
import sys

from shards import cli as shards_cli

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("trainer.train", "pretrain on shards with DeepSpeed ZeRO-3 (resumable)"),
    "eval": ("trainer.evaluation.evaluate", "zero-shot classification, held-out metrics, text-to-video, and a report"),
    "caption": ("trainer.evaluation.caption", "captioning from frozen VideoBERT features (Table 3) and linear probes"),
    "export": ("trainer.evaluation.export", "a checkpoint -> a transformers BertForPreTraining directory"),
    "demo": ("trainer.demo", "run the whole pipeline on the built-in synthetic corpus"),
}
"""Command name -> (module, one-line help)."""


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videobert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = shards_cli.first_positional(argv)
    shards = commands.add_parser(
        "shards", help="prepare, tokenize and inspect shards", description=shards_cli.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stages = shards.add_subparsers(dest="stage", required=True, metavar="STAGE")
    shards_cli.add_stage_parsers(stages, argv[argv.index("shards") + 1 :] if chosen == "shards" else [])
    shards_cli.add_command_parsers(commands, COMMANDS, chosen)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
