"""Key ranges: cutting a sorted listing into units, and checking that units tile a bucket.

A range is ``start`` (inclusive) to ``end`` (exclusive); ``None`` is the open end on either
side. Boundaries are the shortest strings that separate two neighbouring keys, so they
read like prefixes (``openim/data/hash/8``) and a key created later between two split
prefixes still falls into exactly one range.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class _Part:
    first: str
    last: str
    count: int
    nbytes: int


class _Node:
    """An inner node of the compressed key trie while the sorted listing streams by."""

    __slots__ = ("depth", "parts", "count", "nbytes")

    def __init__(self, depth: int) -> None:
        self.depth, self.count, self.nbytes = depth, 0, 0
        self.parts: list[_Part] = []

    def add(self, part: _Part, limit: _Limit) -> None:
        self.count += part.count
        self.nbytes += part.nbytes
        last = self.parts[-1] if self.parts else None
        if last is not None and limit.fits(last.count + part.count, last.nbytes + part.nbytes):
            self.parts[-1] = _Part(last.first, part.last, last.count + part.count,
                                   last.nbytes + part.nbytes)
        else:
            self.parts.append(part)

    def finish(self, limit: _Limit) -> list[_Part]:
        if limit.fits(self.count, self.nbytes):
            return [_Part(self.parts[0].first, self.parts[-1].last, self.count, self.nbytes)]
        return self.parts


@dataclass(frozen=True)
class _Limit:
    count: int
    nbytes: int | None

    def fits(self, count: int, nbytes: int) -> bool:
        return count <= self.count and (self.nbytes is None or nbytes <= self.nbytes)


def _lcp(a: str, b: str) -> int:
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:  # binary search: slice compares run in C
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def separator(last: str, first: str) -> str:
    """The shortest string s with last < s <= first: a readable range boundary."""
    return first[:_lcp(last, first) + 1]


def split_ranges(entries: Iterable[tuple[str, int]], limit: int,
                 byte_limit: int | None = None) -> list[_Part]:
    """Cut sorted (key, size) pairs into runs of <= limit keys (and <= byte_limit bytes,
    unless one object alone is larger) at prefix boundaries.

    One pass, memory O(key length + runs): in sorted order every prefix's keys are
    contiguous, so a prefix is complete (and its count known) as soon as the listing
    leaves it. Subtrees that fit stay whole; neighbours that fit together are merged.
    """
    fit = _Limit(limit, byte_limit)
    stack = [_Node(0)]
    prev: str | None = None
    prev_size = 0

    def close_to(depth: int) -> None:
        while stack[-1].depth > depth:
            parts = stack.pop().finish(fit)
            if stack[-1].depth < depth:
                stack.append(_Node(depth))
            for part in parts:
                stack[-1].add(part, fit)

    for key, size in entries:
        if prev is not None:
            right = _lcp(prev, key)
            if right > stack[-1].depth:
                stack.append(_Node(right))
            stack[-1].add(_Part(prev, prev, 1, prev_size), fit)
            close_to(right)
        prev, prev_size = key, size
    if prev is not None:
        stack[-1].add(_Part(prev, prev, 1, prev_size), fit)
        close_to(0)
    return stack[0].parts


def range_name(start: str | None, end: str | None) -> str:
    return f"[{start or ''}..{end or ''})"


def tiling_gaps(ranges: Iterable[tuple[str | None, str | None]]) -> list[str]:
    """Where ranges fail to tile the whole key space exactly once, one phrase each.

    A hole means keys no unit copies or verifies (a narrowed or deleted unit); an overlap
    means keys two units claim; an empty range is an edited bound.
    """
    problems: list[str] = []
    reached: str | None = None  # everything below this is covered; None: nothing yet
    open_end = False  # a range ending at None was seen: the rest of the space is covered
    ordered = sorted(ranges, key=lambda r: (r[0] is not None, r[0] or ""))
    for start, end in ordered:
        if start is not None and end is not None and start >= end:
            problems.append(f"keys {range_name(start, end)}: empty range (start >= end)")
            continue
        if open_end:
            problems.append(f"keys {range_name(start, end)} are in two units")
            continue
        if start != reached:
            if start is None or (reached is not None and start < reached):
                problems.append(f"keys {range_name(start, reached)} are in two units")
            else:
                problems.append(f"keys {range_name(reached, start)} are in no unit")
        if end is None:
            open_end = True
        elif reached is None or end > reached:
            reached = end
    if not open_end:
        problems.append(f"keys {range_name(reached, None)} are in no unit")
    return problems
