"""Except-blocks: stretches of a log between two markers where a crash string is expected.

Some tests provoke a crash on purpose (an assert death test prints ` ASSERT
FAILED`, a sanitizer test prints `ERROR: AddressSanitizer`) and print a start
marker before and an end marker after. Fuchsia's crash scan does not count
the string inside such a block. The rule, as tools/testing/tefmocheck's
`stringInLogCheck.checkBytes` applies it to one occurrence at `index`:

- take the last start marker that ends before `index` (none: this block
  does not apply) and the last end marker that ends before `index`;
- if that end marker comes before that start marker, the occurrence is
  inside the block and excused, whether or not an end marker follows (a
  missing end marker means the log was cut, and everything after a stray
  start counts as inside the block).

The same rule serves a whole saved log (`excusing_block`) and the live
console (`BlockTracker`), which sees the log a read at a time and must decide
at the moment a crash string arrives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

# How far back (bytes) the tracker keeps every marker occurrence; older ones are reduced
# to the latest before this horizon. The console never asks about an offset further back
# than its search window (one read of at most 64 KiB plus its look-back).
HORIZON = 1 << 20
ANCHOR = 6  # bytes of a marker's start that group it with others


@dataclasses.dataclass(frozen=True)
class LogBlock:
    """A start and an end marker, as tefmocheck's `logBlock` (check-configs.yaml except_blocks)."""

    start: bytes
    end: bytes


def excusing_block(data: bytes, index: int, blocks: Iterable[LogBlock]) -> LogBlock | None:
    """The block that excuses the occurrence at `index` of `data`, or None if none does."""
    for block in blocks:
        # rfind's end bound: only markers that end before `index` (Go's LastIndex on
        # data[:index]), without copying that prefix for every occurrence.
        start = data.rfind(block.start, 0, index)
        if start < 0:
            continue
        if data.rfind(block.end, 0, index) < start:
            return block
    return None


def _common_prefix(items: list[bytes]) -> bytes:
    """The longest prefix every one of `items` starts with."""
    first, last = min(items), max(items)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


class BlockTracker:
    """Where each except-block marker occurred in a stream fed a read at a time.

    `feed` records the absolute offset of every marker occurrence (a marker
    split across two reads included); `excused(offset, blocks)` then applies
    the rule above to an occurrence at `offset`, as long as `offset` lies
    within HORIZON of the newest byte.
    """

    def __init__(self, markers: Iterable[bytes]) -> None:
        self.markers = sorted({m for m in markers if m})
        self.total = 0  # bytes fed so far
        self._keep = max((len(m) for m in self.markers), default=1) - 1
        self._tail = b""
        self._seen: dict[bytes, list[int]] = {m: [] for m in self.markers}
        # Markers grouped by their first bytes: one substring search per group rather than
        # per marker (Fuchsia's blocks share prefixes: "RUN   Test", "[ RUN      ] Zx", ...).
        # This keeps the tracker as fast as the crash watch it serves.
        size = min((len(m) for m in self.markers), default=1)
        size = min(size, ANCHOR)
        grouped: dict[bytes, list[bytes]] = {}
        for m in self.markers:
            grouped.setdefault(m[:size], []).append(m)
        # Each group searched for its longest common prefix: a longer needle skips further.
        self._groups = {_common_prefix(ms): ms for ms in grouped.values()}

    def feed(self, data: bytes) -> None:
        if not self.markers or not data:
            self.total += len(data)
            return
        window = self._tail + data
        base = self.total - len(self._tail)  # absolute offset of window[0]
        fresh = len(self._tail)  # a match must end past here, or it was recorded already
        for anchor, markers in self._groups.items():
            at = window.find(anchor)
            while at >= 0:
                for marker in markers:
                    if at + len(marker) > fresh and window.startswith(marker, at):
                        self._record(marker, base + at)
                at = window.find(anchor, at + 1)
        self.total += len(data)
        self._tail = window[-self._keep:] if self._keep else b""

    def _record(self, marker: bytes, offset: int) -> None:
        seen = self._seen[marker]
        seen.append(offset)
        horizon = self.total - HORIZON
        if len(seen) > 64 and seen[1] < horizon:
            # Keep the latest occurrence before the horizon and everything after it.
            first_recent = next((i for i, o in enumerate(seen) if o >= horizon), len(seen))
            del seen[: max(0, first_recent - 1)]

    def _last_before(self, marker: bytes, offset: int) -> int:
        """Offset of the last occurrence of `marker` that ends at or before `offset`, or -1."""
        for at in reversed(self._seen.get(marker, ())):
            if at + len(marker) <= offset:
                return at
        return -1

    def excused(self, offset: int, blocks: Iterable[LogBlock]) -> LogBlock | None:
        """The block that excuses an occurrence at absolute `offset`, or None."""
        for block in blocks:
            start = self._last_before(block.start, offset)
            if start < 0:
                continue
            if self._last_before(block.end, offset) < start:
                return block
        return None
