"""An output folder's small files: JSON written atomically, errors.jsonl, and the run record that claims
the folder for one run of a stage.

Light on purpose (no webdataset, no torch): ``videobert shards status`` and the trainer's run folder
use these without loading the shard writer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from videobert.shards import schema, storage


def claim_output_folder(
    out: Path, record: dict[str, Any], *, overwrite: bool, stage: str,
    argument_differences: Callable[[dict[str, Any], dict[str, Any]], list[str]],
    error: type[Exception], extra_patterns: Sequence[str] = (),
) -> bool:
    """Make ``out`` the folder of this stage's run, described by ``record`` (``stage``,
    ``format_version``, ``arguments``...), written as ``schema.RUN_FILE``.

    A folder holding the same run is resumed (True when that run already finished: its summary
    exists); one holding another run, or shards without a run file, raises ``error`` naming what
    differs (``argument_differences(previous, record)`` lists the stage's own arguments). With
    ``overwrite`` the stage's earlier outputs (shards, ``extra_patterns``, partial files, run,
    summary and errors files) are removed first.
    """
    run_file = out / schema.RUN_FILE
    if overwrite:
        remove_outputs(out, extra_patterns)
    elif run_file.exists():
        previous = read_json(run_file)
        differences = record_differences(previous, record, stage, argument_differences)
        if differences:
            raise error(
                f"{out} holds a run with other arguments ({'; '.join(differences)}); re-run with the same "
                "arguments to finish it, write elsewhere, or add --overwrite to start over"
            )
        return (out / schema.SUMMARY_FILE).exists()
    elif any(out.glob(f"{schema.SHARD_PREFIX}*")):
        raise error(f"{out} holds shards but no {schema.RUN_FILE}; add --overwrite to replace them")
    write_json_atomic(run_file, record)
    return False


def record_differences(previous: dict[str, Any], record: dict[str, Any], stage: str,
                       argument_differences: Callable[[dict[str, Any], dict[str, Any]], list[str]]) -> list[str]:
    """What differs between a run file found and the run about to start (empty: the same run)."""
    differences = argument_differences(previous, record)
    if previous.get("stage") != stage or previous.get("format_version") != schema.FORMAT_VERSION:
        differences.append(f"written by stage {previous.get('stage')!r}, format {previous.get('format_version')!r}")
    return differences


def remove_outputs(out: Path, extra_patterns: Sequence[str] = ()) -> None:
    """Remove a stage's outputs from a folder: shards, partial files, run, summary and errors files."""
    patterns = [f"{schema.SHARD_PREFIX}*", *extra_patterns, f"*{schema.PARTIAL_SUFFIX}", schema.RUN_FILE,
                schema.SUMMARY_FILE, schema.ERRORS_FILE]
    for pattern in patterns:
        for path in out.glob(pattern):
            if path.is_file():
                path.unlink()
    storage.unpublished(out, patterns)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to ``path`` via a temporary name, so that a reader sees the old file or the new one."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary name, synced to disk with the rename: a reader (or a
    restart after a crash) sees the old file or the new one, never a part. The temporary name is the
    process's own, so that parts of a split run may write the same file at once."""
    path = Path(path)
    temporary = path.with_name(f"{path.name}.{os.getpid()}{schema.PARTIAL_SUFFIX}")
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    fsync_folder(path.parent)
    storage.published(path)


def create_json_once(path: Path, data: Any) -> bool:
    """Write JSON to ``path`` unless the file exists, atomically even against other processes doing the
    same (the first one wins); True when this call created it."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}{schema.PARTIAL_SUFFIX}")
    temporary.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    try:
        os.link(temporary, path)  # fails when the name exists: no window in which two could win
    except FileExistsError:
        return False
    finally:
        temporary.unlink()
    fsync_folder(path.parent)
    storage.published(path)
    return True


def read_json_lines(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; a line cut short by a killed writer is dropped."""
    path = Path(path)
    if not path.exists():
        return []
    lines = []
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            item = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(item, dict):
            lines.append(item)
    return lines


class ErrorLog:
    """``errors.jsonl``: started from the given lines (written atomically), then appended to."""

    def __init__(self, path: str | Path, lines: Iterable[Mapping[str, Any]] = ()) -> None:
        self.path = Path(path)
        temporary = self.path.with_name(self.path.name + schema.PARTIAL_SUFFIX)
        with open(temporary, "w", encoding="utf-8") as f:
            f.writelines(_json_line(line) for line in lines)
        os.replace(temporary, self.path)
        storage.published(self.path)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, line: Mapping[str, Any]) -> None:
        self._file.write(_json_line(line))

    def flush(self) -> None:
        self._file.flush()

    def sync(self) -> None:
        """Flush to the disk (called before a shard is committed, so its errors are never lost)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        storage.published(self.path)  # a remote folder's errors.jsonl: the whole file, again

    def close(self) -> None:
        self._file.close()
        storage.published(self.path)


def _json_line(line: Mapping[str, Any]) -> str:
    return json.dumps(line, ensure_ascii=False) + "\n"


def fsync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX: the folder's entry is data of the folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
