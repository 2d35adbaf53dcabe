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


class VideoBertError(Exception):
    """A problem the user can fix; the command line prints its message and exits with ``exit_status``."""

    exit_status: int = 2
    """2: the command was given something it cannot use (the usual status for usage errors)."""


class MissingFileError(VideoBertError, FileNotFoundError):
    """A file or folder the user named does not exist, or lacks what it must hold."""
