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
from typing import NoReturn

from videobert.models.errors import VideoBertError, printable
from videobert.shards import cli as shards_cli
from videobert.shards.options import normalize_option_names
from videobert.trainer.process import end_process

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("videobert.trainer.train", "pretrain on shards with DeepSpeed ZeRO-3 (resumable)"),
    "eval": ("videobert.trainer.evaluation.evaluate", "zero-shot classification, held-out metrics, text-to-video, and a report"),
    "caption": ("videobert.trainer.evaluation.captioning.command", "captioning from frozen VideoBERT features (Table 3) and linear probes"),
    "export": ("videobert.trainer.export", "a checkpoint -> a transformers BertForPreTraining directory"),
    "demo": ("videobert.trainer.demo", "run the whole pipeline on the built-in synthetic corpus"),
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
    shards_cli.add_command_parsers(stages, shards_cli.STAGES,
                                   shards_cli.first_positional(argv[argv.index("shards") + 1 :]) if chosen == "shards" else None)
    shards_cli.add_command_parsers(commands, COMMANDS, chosen)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a ``VideoBertError`` becomes its message on stderr and its exit status."""
    argv = normalize_option_names(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except VideoBertError as e:
        command = " ".join(["videobert", args.command] + ([args.stage] if args.command == "shards" else []))
        print(f"{command}: error: {printable(str(e))}", file=sys.stderr)
        return e.exit_status


def entry(argv: list[str] | None = None) -> NoReturn:
    """The ``videobert`` command and the modules launchers start: ``main``, then the process ends with
    its status by ``trainer.process.end_process`` (Python's shutdown work done, the libraries' teardown
    skipped). An argument error or an uncaught exception ends the process as Python would."""
    end_process(main(argv))


if __name__ == "__main__":  # `python -m videobert.trainer.cli shards prepare ...`, as launchers start it
    entry()
