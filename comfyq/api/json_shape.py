"""Counting a JSON body's values and the length of its top-level lists while it is read, before it is parsed.

Parsing expands JSON many times over in memory (the 3 bytes `{},` become a dict of about 90 bytes) and validating
it can add an error object per item, so a body is measured first and refused as soon as a limit is passed,
without holding or parsing the rest of it. The scan runs at C speed on each chunk: strings are cut out, everything
but brackets and commas is deleted, and complete containers are collapsed by a few passes of one substitution,
so Python sees only the handful of brackets that a chunk leaves open or closes."""

from __future__ import annotations

import re
from dataclasses import dataclass

# A complete string (the unrolled form of "(?:[^"\\]|\\.)*"), and the rest of one that began before the chunk.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)
_NOT_STRUCTURAL = bytes(b for b in range(256) if b not in b"{}[],")
_INNERMOST = re.compile(rb"\{[^{}\[\]]*\}|\[[^{}\[\]]*\]")
_TOKEN = re.compile(rb"[{\[]|[}\]]|,+")
# Each pass removes one level of the containers that open and close within a chunk; a job nests about 6 deep. A
# chunk that needs more stops the list count (the parser counts the items exactly afterwards), so a body of
# deeply nested brackets costs at most this many passes a chunk.
COLLAPSE_PASSES = 12


@dataclass(frozen=True)
class ShapeLimits:
    """What a body may hold: values at any depth, and elements in a list directly under the top-level value (the
    jobs of a batch; None: not counted)."""

    max_values: int
    max_list_items: int | None = None


class ShapeExceeded(Exception):
    """A limit was passed: `limit` is "values" or "list_items", `bound` its value."""

    def __init__(self, limit: str, bound: int) -> None:
        super().__init__(f"more {limit} than {bound}")
        self.limit = limit
        self.bound = bound


class JsonShape:
    """Fed a body chunk by chunk, raises ShapeExceeded as soon as a limit is passed. Whether the body is valid
    JSON at all is the parser's to say, afterwards. The value count is exact for valid JSON; the list count is
    exact for a list that spans chunks, and 0 for one that opens and closes within a chunk (its commas go with
    the collapse): such a list is small, and the caller counts it after parsing."""

    def __init__(self, limits: ShapeLimits) -> None:
        self.limits = limits
        # Every value but a container's first element follows a comma, and every container opens with a
        # bracket, so 1 + opening brackets + commas counts the values (an empty {} or [] twice).
        self.values = 1
        self.depth = 0
        self.list_items = 0  # commas so far in the current list directly under the top-level value
        self._counting = limits.max_list_items is not None
        self._in_list = False
        self._in_string = False
        self._escaped = False  # the last chunk ended on a backslash inside a string

    def feed(self, chunk: bytes) -> None:
        outside = self._outside_strings(chunk)
        skeleton = outside.translate(None, _NOT_STRUCTURAL)
        self.values += len(skeleton) - skeleton.count(b"}") - skeleton.count(b"]")
        if self.values > self.limits.max_values:
            raise ShapeExceeded("values", self.limits.max_values)
        if self._counting:
            self._walk(skeleton)

    def _outside_strings(self, chunk: bytes) -> bytes:
        """The chunk without the text of its strings; the state carries a string over into the next chunk."""
        if self._escaped:
            self._escaped, chunk = False, chunk[1:]
        if b"\\" not in chunk:  # no escapes: every quote opens or closes a string, and split is fastest
            parts = chunk.split(b'"')
            outside = b"".join(parts[1 if self._in_string else 0::2])
            self._in_string ^= len(parts) % 2 == 0
            return outside
        start = 0
        if self._in_string:
            end = _STRING_REST.match(chunk).end()  # type: ignore[union-attr]
            if end == len(chunk) or chunk[end] != ord('"'):
                self._escaped = end < len(chunk)  # stopped on a backslash that is the chunk's last byte
                return b""
            self._in_string, start = False, end + 1
        outside = _STRING.sub(b"", chunk[start:])
        quote = outside.find(b'"')
        if quote >= 0:  # a string that goes on in the next chunk: everything after its quote is its text
            tail = outside[quote + 1:]
            self._in_string = True
            self._escaped = _STRING_REST.match(tail).end() < len(tail)  # type: ignore[union-attr]
            outside = outside[:quote]
        return outside

    def _walk(self, skeleton: bytes) -> None:
        """Complete containers collapsed, what is left is the brackets open or closed across chunks and the
        commas between them: a few tokens a chunk, whatever its size."""
        for _ in range(COLLAPSE_PASSES):
            collapsed = _INNERMOST.sub(b"", skeleton)
            if len(collapsed) == len(skeleton):
                break
            skeleton = collapsed
        else:
            self._counting = False  # too deep to follow at this price; the parser counts instead
            return
        max_items = self.limits.max_list_items
        assert max_items is not None
        for token in _TOKEN.findall(skeleton):
            first = token[0]
            if first == ord(","):
                if self._in_list and self.depth == 2:
                    self.list_items += len(token)
                    if self.list_items >= max_items:  # max_items commas: at least max_items + 1 elements
                        raise ShapeExceeded("list_items", max_items)
            elif first in b"{[":
                self.depth += 1
                if self.depth == 2:
                    self._in_list, self.list_items = first == ord("["), 0
            else:
                self.depth -= 1
