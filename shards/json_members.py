"""The members of a large JSON object, one at a time, as raw bytes: for HowTo100M's multi-GB caption.json.

``iter_members(file)`` reads a binary file in chunks and yields each member of its top-level object
as ``Member(key, key_offset, value, value_offset)``: the raw bytes of the key (quotes included) and
of the value, with their byte offsets in the file. Memory holds one chunk and one member, whatever
the file's size. Values are not parsed here: the caller parses those it wants with ``json.loads``,
so a process that needs a hundredth of the videos pays a hundredth of the parsing and memory (and
any value that the standard parser refuses, such as one nested too deeply, costs that member only).

What is checked here is what must hold to find a value at all: strings closed, brackets balanced
and matching, members separated by ``:`` and ``,``, nothing after the object. A break raises
``StructureError`` naming the byte offset, line and column. A value that is delimited but not valid
JSON inside (``[1 2]``) is found by the caller when it parses it.

A library was considered: streaming JSON parsers (ijson/yajl) decode strings themselves, which
costs the exact accounting of invalid UTF-8 (one entry lost, with its byte offset) and of unpaired
surrogate escapes that the transcript readers give; here the standard parser sees each value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

CHUNK_BYTES = 8 << 20
LOOKAHEAD_BYTES = 1 << 20
"""Bytes kept ahead of a value before it is matched in one go (larger values are scanned piecewise)."""

_STRING = rb'"(?:[^"\\]++|\\.)*+"'
_ATOM = rb'(?:[^"\[\]{}]++|' + _STRING + rb")"
# A value in one regex match when it is no deeper than an object of arrays (a HowTo100M video's
# captions): what nearly every member is, matched at C speed.
_FLAT_VALUE = re.compile(
    rb"\{(?:" + _ATOM + rb"|\[" + _ATOM + rb"*+\])*+\}|\[" + _ATOM + rb"*+\]|" + _STRING + rb'|[^\s,:{}\[\]"]++',
    re.DOTALL,
)
_STRING_AT = re.compile(_STRING, re.DOTALL)
_SPECIAL = re.compile(rb'["\[\]{}]')
_SPACE = re.compile(rb"[ \t\n\r]*+")
_CLOSING = {ord("]"): ord("["), ord("}"): ord("{")}
_KINDS = {ord("["): "list", ord('"'): "str", ord("t"): "bool", ord("f"): "bool", ord("n"): "NoneType"}


class StructureError(ValueError):
    """The file's structure breaks at ``offset`` (bytes), ``line``, ``column`` (1-based)."""

    def __init__(self, message: str, offset: int, line: int, column: int, found: str | None = None) -> None:
        super().__init__(f"line {line}, column {column}: {message}")
        self.message, self.offset, self.line, self.column = message, offset, line, column
        self.found = found
        """When the file holds no object at all: the kind of value it holds (``list``, ``str``...)."""


@dataclass(frozen=True)
class Member:
    key: bytes
    """The key as written, quotes included (a JSON string)."""
    key_offset: int
    value: bytes
    value_offset: int


def iter_members(file: BinaryIO, *, base_offset: int = 0, chunk_bytes: int = CHUNK_BYTES) -> Iterator[Member]:
    """The members of the JSON object ``file`` holds, in file order (a UTF-8 BOM is skipped).
    ``base_offset``: where ``file`` starts in a larger file (offsets and lines count from there)."""
    scan = _Scanner(file, base_offset, chunk_bytes)
    scan.skip_bom()
    scan.skip_space()
    first = scan.peek()
    if first != ord("{"):
        found = _KINDS.get(first, "number") if first is not None else None
        raise scan.error("expected a JSON object" if first is not None else "the file is empty", found=found)
    scan.pos += 1
    scan.skip_space()
    if scan.peek() == ord("}"):
        scan.pos += 1
    else:
        yield from _members(scan)
    scan.skip_space()
    if scan.peek() is not None:
        raise scan.error("Extra data")


def _members(scan: "_Scanner") -> Iterator[Member]:
    while True:
        scan.compact()
        if scan.peek() != ord('"'):
            raise scan.error("Expecting property name enclosed in double quotes")
        key_start = scan.pos
        key_end = scan.string_end()
        key = bytes(scan.buf[key_start:key_end])
        key_offset = scan.offset(key_start)
        scan.pos = key_end
        scan.skip_space()
        if scan.peek() != ord(":"):
            raise scan.error("Expecting ':' delimiter")
        scan.pos += 1
        scan.skip_space()
        value_start, value_end = scan.pos, scan.value_end()
        yield Member(key, key_offset, bytes(scan.buf[value_start:value_end]), scan.offset(value_start))
        scan.pos = value_end
        scan.skip_space()
        following = scan.peek()
        if following == ord("}"):
            scan.pos += 1
            return
        if following != ord(","):
            raise scan.error("Expecting ',' delimiter")
        scan.pos += 1
        scan.skip_space()


def line_column(file: BinaryIO, offset: int, chunk_bytes: int = CHUNK_BYTES) -> tuple[int, int]:
    """(line, column), 1-based, of a byte offset of a file (read from its start: for messages only)."""
    file.seek(0)
    lines, line_start, done = 0, 0, 0
    while done < offset:
        chunk = file.read(min(chunk_bytes, offset - done))
        if not chunk:
            break
        newlines = chunk.count(b"\n")
        if newlines:
            lines += newlines
            line_start = done + chunk.rfind(b"\n") + 1
        done += len(chunk)
    file.seek(line_start)
    prefix = file.read(offset - line_start)
    return lines + 1, len(prefix.decode("utf-8", errors="replace")) + 1


class _Scanner:
    """A window on the file: ``buf`` holds the bytes from absolute offset ``base`` on."""

    def __init__(self, file: BinaryIO, base_offset: int, chunk_bytes: int) -> None:
        self.file, self.chunk_bytes = file, chunk_bytes
        self.buf = b""
        self.base = base_offset
        self.pos = 0
        self.eof = False
        self.lines_before = 0
        """Newlines in the bytes dropped from the window."""
        self.line_start_before = base_offset
        """Offset of the first byte after the last dropped newline."""

    # -- the window ----------------------------------------------------------------------------------

    def more(self) -> bool:
        """Read the next chunk into the window; False at the end of the file."""
        if self.eof:
            return False
        chunk = self.file.read(self.chunk_bytes)
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def ensure(self, ahead: int) -> None:
        while len(self.buf) - self.pos < ahead and self.more():
            pass

    def compact(self) -> None:
        """Drop the bytes before ``pos`` once they are a chunk's worth (members are small)."""
        if self.pos < self.chunk_bytes:
            return
        dropped = self.buf[: self.pos]
        newlines = dropped.count(b"\n")
        if newlines:
            self.lines_before += newlines
            self.line_start_before = self.base + dropped.rfind(b"\n") + 1
        self.buf = self.buf[self.pos:]
        self.base += self.pos
        self.pos = 0

    def offset(self, pos: int) -> int:
        return self.base + pos

    def peek(self) -> int | None:
        self.ensure(1)
        return self.buf[self.pos] if self.pos < len(self.buf) else None

    # -- tokens ---------------------------------------------------------------------------------------

    def skip_bom(self) -> None:
        self.ensure(3)
        if self.buf.startswith(b"\xef\xbb\xbf", self.pos):
            self.pos += 3

    def skip_space(self) -> None:
        while True:
            self.pos = _SPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or not self.more():
                return

    def string_end(self, at: int | None = None) -> int:
        """End of the JSON string starting at ``at`` (default ``pos``), reading on as needed."""
        at = self.pos if at is None else at
        while True:
            found = _STRING_AT.match(self.buf, at)
            if found is not None:
                return found.end()
            if not self.more():
                raise self.error("Unterminated string starting at", at)

    def value_end(self) -> int:
        """End of the value at ``pos``: one regex match when flat, else scanned bracket by bracket."""
        self.ensure(LOOKAHEAD_BYTES)
        flat = _FLAT_VALUE.match(self.buf, self.pos)
        if flat is not None and (flat.end() < len(self.buf) or self.eof):
            return flat.end()
        if self.peek() in (ord("{"), ord("[")):
            return self._nested_end()
        if self.peek() == ord('"'):
            return self.string_end()
        raise self.error("Expecting value")

    def _nested_end(self) -> int:
        """Scan a nested value: strings skipped whole, brackets matched on a stack (no recursion)."""
        stack = bytearray()
        at = self.pos
        while True:
            found = _SPECIAL.search(self.buf, at)
            if found is None:
                at = len(self.buf)
                if not self.more():
                    raise self.error("unexpected end of file inside a value opened", self.pos)
                continue
            at = found.start()
            char = self.buf[at]
            if char == ord('"'):
                at = self.string_end(at)
                continue
            if char in _CLOSING:
                if not stack or stack[-1] != _CLOSING[char]:
                    raise self.error(f"'{chr(char)}' does not close an open bracket here", at)
                stack.pop()
                if not stack:
                    return at + 1
            else:
                stack.append(char)
            at += 1

    # -- errors ---------------------------------------------------------------------------------------

    def error(self, message: str, at: int | None = None, found: str | None = None) -> StructureError:
        at = self.pos if at is None else at
        line_break = self.buf.rfind(b"\n", 0, at)
        line = self.lines_before + self.buf.count(b"\n", 0, at) + 1
        if line_break >= 0:
            prefix = self.buf[line_break + 1: at]
        else:
            prefix = self.buf[:at]  # the line started before the window: count what is in it
        column = len(prefix.decode("utf-8", errors="replace")) + 1
        if line_break < 0:
            column += self.base - self.line_start_before
        return StructureError(message, self.offset(at), line, column, found)
