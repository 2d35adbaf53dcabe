"""The one base class of the project's errors.

A ``VideoBertError`` is a problem the user can fix (a config, an input file, a checkpoint, a missing
program): its message says what is wrong and where. The command line's entry point
(``trainer.cli.main``) catches it once, prints the message and exits with ``exit_status``; a traceback
means a bug. It lives here, at the bottom of the import graph (``models`` imports neither ``shards``
nor ``trainer``), so that every room can raise it.

Subclasses exist where a caller tells them apart (``except CodebookError``), or where the exit status
differs; each keeps the built-in base it always had (``ValueError``, ``RuntimeError``), so existing
``except ValueError`` callers still see it.
"""

from __future__ import annotations

import logging
import re


class VideoBertError(Exception):
    """A problem the user can fix; the command line prints its message and exits with ``exit_status``."""

    exit_status: int = 2
    """2: the command was given something it cannot use (the usual status for usage errors)."""


class MissingFileError(VideoBertError, FileNotFoundError):
    """A file or folder the user named does not exist, or lacks what it must hold."""


_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_UNPRINTABLE_IN_A_LINE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def printable(text: str, *, one_line: bool = False) -> str:
    """``text`` with its control characters escaped (``\\x1b``, ``\\u202e``; tabs kept, newlines too
    unless ``one_line``): a shard key or a file name quoted in a message cannot move the cursor,
    recolour the terminal, or forge a line of its own."""
    pattern = _UNPRINTABLE_IN_A_LINE if one_line else _UNPRINTABLE
    return pattern.sub(_escape, text)


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class PrintableFormatter(logging.Formatter):
    """A log formatter whose messages are one line each, their control characters escaped (a
    traceback, which is ours, is appended as it is)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record), one_line=True)
