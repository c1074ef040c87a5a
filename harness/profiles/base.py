"""What every guest profile is made of, and the crash scan they all share.

A profile holds everything guest-OS-specific that the console and the suites
need: how to tell the guest is ready, what its prompt looks like, which
commands reboot or power it off, and which console lines mean it crashed.
Scanning is on raw bytes because that is what the console reads (a split
UTF-8 sequence or a stray control byte must never make the scan raise); only
the excerpt handed to people is decoded.
"""

from __future__ import annotations

import dataclasses
import re

from harness.logblocks import BlockTracker, LogBlock, excusing_block

# Lines kept around a crash: the lines that led to it matter less than the dump after it.
EXCERPT_BEFORE = 10
EXCERPT_AFTER = 30
# How far (in lines) after a crash's first line other signatures still belong to the same crash.
SAME_CRASH_LINES = EXCERPT_AFTER

_NEVER = re.compile(rb"(?!x)x")
_ANSI = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[ -/]*[0-~])")
# C0 controls except \t and \n, DEL, and C1 controls (as code points, after decoding).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def signature_pattern(regex: bytes) -> re.Pattern[bytes]:
    """Compile a signature regex the one way all signatures are compiled.

    Every signature shares the same flags (MULTILINE, so `^` means a line
    start), which is what lets `Profile.crash_regex` join them into one
    alternation for pexpect.
    """
    return re.compile(regex, re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class CrashSignature:
    """A console pattern that means the guest (or the host under it) is in trouble.

    `fatal=False` marks what is reported but does not end a test (a Linux
    WARNING, a user process crash). The three extra switches describe
    signatures whose meaning depends on their surroundings, so that the
    profile, not every caller, gets them right:

    - `precursor`: a line printed at the start of a crash before the line
      that says what kind of crash it is (Zircon's "stopping other cpus").
      It only names the crash when nothing more specific follows.
    - `boot_banner`: the guest's first boot line. It is a crash (an
      unexpected reboot) only once the guest had booted and nothing
      announced a reboot (no reset marker since the boot).
    - `except_strings`: text whose presence anywhere in the log cancels the
      signature (Fuchsia ignores the panic shell once a boot test passed).
    - `except_blocks`: start and end markers between which the signature is
      expected (a death test's assert, a sanitizer test's report) and does not
      count (see harness.logblocks); the live watch asks the console's
      BlockTracker, a scan of a whole log looks back in it.

    `hint` is a literal the pattern cannot match without: a scan of a long
    log skips the regex when the literal is absent (a plain substring search
    is an order of magnitude faster than a regex tried at every offset).

    Only unconditional fatal signatures go into `Profile.crash_regex`, so a
    live match there always means a crash.
    """

    name: str
    pattern: re.Pattern[bytes]
    fatal: bool = True
    precursor: bool = False
    boot_banner: bool = False
    except_strings: tuple[bytes, ...] = ()
    except_blocks: tuple[LogBlock, ...] = ()
    hint: bytes | None = None

    @property
    def unconditional(self) -> bool:
        """Whether a match is a crash whatever else the log holds (except-blocks aside).

        A signature with except-blocks stays in the live watch: whether a match
        is inside a block depends only on what came before it, which the
        console's BlockTracker knows at that moment.
        """
        return not (self.boot_banner or self.except_strings)


class CrashWatch:
    """The live crash watch: a pattern-like object the console adds to every wait.

    pexpect's regex searcher calls `search(buffer, pos)` on each read. An
    alternation of every signature tries each one's regex at every offset, which
    made the watch the console's main cost (4 MB/s of captured output, 0.25 s of
    CPU per boot). Here a signature's regex runs only where its `hint` literal
    occurs (`bytes.find`, memchr-fast), so ordinary output costs one substring
    search per signature. The result is what the alternation would give: the
    leftmost match, the signature declared first on a tie.

    With a BlockTracker (fed every byte the console reads, so the end of the
    buffer pexpect searches is the tracker's newest byte), a match inside one
    of its signature's except-blocks is skipped: it is expected there.
    """

    def __init__(self, signatures: tuple[CrashSignature, ...],
                 blocks: BlockTracker | None = None) -> None:
        self.signatures = [(s.hint, s.pattern, s.except_blocks) for s in signatures]
        self.blocks = blocks
        # What pexpect prints when it describes its patterns.
        self.pattern = b"|".join(b"(?:" + s.pattern.pattern + b")" for s in signatures)

    def search(self, buf: bytes, pos: int = 0) -> re.Match[bytes] | None:
        best: re.Match[bytes] | None = None
        for hint, pattern, except_blocks in self.signatures:
            if hint is not None and buf.find(hint, pos) < 0:
                continue
            m = pattern.search(buf, pos)
            if except_blocks and self.blocks is not None:
                while m is not None and self.blocks.excused(
                        self.blocks.total - len(buf) + m.start(), except_blocks):
                    m = pattern.search(buf, max(m.end(), m.start() + 1))
            if m is not None and (best is None or m.start() < best.start()):
                best = m
        return best


@dataclasses.dataclass(frozen=True)
class Crash:
    signature: str
    excerpt: str
    offset: int


@dataclasses.dataclass(frozen=True)
class _Hit:
    offset: int
    line: int
    signature: CrashSignature


@dataclasses.dataclass(frozen=True)
class Profile:
    """Guest-OS knowledge; subclasses add the kernel command line (it varies by arch, engine)."""

    name: str
    boot_marker: re.Pattern[bytes]
    prompt: re.Pattern[bytes]
    newline: str
    crash_signatures: tuple[CrashSignature, ...]
    reboot_command: str
    shutdown_command: str
    # tests.json's `os` for programs built for this guest ("fuchsia" or "linux"): which
    # entries testsharder may plan on it, and whether Fuchsia's serial tester runs them.
    os: str
    alt_reboot_command: str | None = None
    alt_shutdown_command: str | None = None
    panic_command: str | None = None
    reset_marker: re.Pattern[bytes] | None = None
    # Each boot gets a fresh secret `kernel.entropy-mixin` (Fuchsia's botanist gives every
    # Zircon boot one): the runner makes it and keeps it out of every log and report.
    takes_entropy_mixin: bool = False
    # Fuchsia's crash scan (harness.fuchsia.tefmocheck) reads this guest's serial log: the
    # strings it looks for there are Fuchsia's own.
    crash_scan_serial: bool = False

    def kernel_args(self, *, arch: str, vmm_adds_console: bool, nodename: str,
                    entropy_mixin: str = "") -> list[str]:
        """The profile's part of the kernel command line. `vmm_adds_console`: the VMM puts
        a console= argument for its console serial port there itself."""
        raise NotImplementedError(f"profile {self.name} does not define kernel arguments")

    def after_restore(self, epoch_s: int) -> str | None:
        """The shell command that makes a guest restored from a snapshot current: its clock
        set to `epoch_s` (UTC seconds), its network renewed. None: guests of this profile
        are not restored (harness.snapshot boots them)."""
        del epoch_s
        return None

    def panic_args(self, policy: str) -> list[str]:
        """Kernel arguments for the environment's panic policy ("reset" or "halt"); none
        where the guest decides itself (Zircon halts, as botanist asks it to)."""
        del policy
        return []

    # -- crash scanning ------------------------------------------------------------------------

    def crash_regex(self) -> re.Pattern[bytes]:
        """One alternation of the unconditional fatal signatures, for a live pexpect watch.

        Conditional signatures (boot banners, ones cancelled by later text) are
        left out: whether they mean a crash is only known from the whole log.
        """
        parts = [s.pattern.pattern for s in self.crash_signatures if s.fatal and s.unconditional]
        if not parts:
            return _NEVER
        return re.compile(b"|".join(b"(?:" + p + b")" for p in parts), re.MULTILINE)

    def crash_watch(self, blocks: BlockTracker | None = None) -> CrashWatch:
        """The same signatures as `crash_regex`, as the console's live watch (see CrashWatch).

        `blocks` tracks the except-block markers of the stream being watched
        (`except_markers`); without it no match is excused.
        """
        return CrashWatch(tuple(s for s in self.crash_signatures if s.fatal and s.unconditional),
                          blocks)

    def except_markers(self) -> list[bytes]:
        """Every start and end marker of the live watch's except-blocks (for a BlockTracker)."""
        return sorted({m for s in self.crash_signatures if s.fatal and s.unconditional
                       for b in s.except_blocks for m in (b.start, b.end)})

    def find_crash(self, data: bytes, *, start: int = 0, booted: bool = False) -> Crash | None:
        """The first fatal crash in `data[start:]` (offsets stay relative to `data`).

        `booted=True` says the capture began after the guest had booted (a
        mid-run capture), so a boot banner in it is an unexpected reboot.
        """
        for event in self._events(data, start, booted):
            if event.signature.fatal:
                return self._crash(data, event)
        return None

    def find_crashes(self, data: bytes, *, booted: bool = False) -> list[Crash]:
        """Every crash in `data`, fatal or not; the lines of one crash are reported once."""
        return [self._crash(data, e) for e in self._events(data, 0, booted)]

    def _hits(self, data: bytes, start: int, booted: bool) -> list[_Hit]:
        raw: dict[int, CrashSignature] = {}
        banners: list[tuple[int, CrashSignature]] = []
        for sig in self.crash_signatures:
            if any(s in data for s in sig.except_strings):
                continue
            if sig.hint is not None and data.find(sig.hint, start) < 0:
                continue
            for m in sig.pattern.finditer(data, start):
                if sig.except_blocks and excusing_block(data, m.start(), sig.except_blocks):
                    continue
                if sig.boot_banner:
                    banners.append((m.start(), sig))
                else:
                    # Two signatures on one spot: the one declared first is the more specific.
                    raw.setdefault(m.start(), sig)
        fatal = sorted(o for o, sig in raw.items() if sig.fatal)
        for offset, sig in banners:
            if self._unexpected_boot(data, offset, booted, fatal):
                raw.setdefault(offset, sig)
        hits: list[_Hit] = []
        line, pos = 0, 0
        for offset in sorted(raw):
            line += data.count(b"\n", pos, offset)
            pos = offset
            hits.append(_Hit(offset, line, raw[offset]))
        return hits

    def _events(self, data: bytes, start: int, booted: bool) -> list[_Hit]:
        """Group hits into crashes: one per burst of same-severity signatures.

        A panic prints several known lines (the banner, the fault, an assert);
        they are one crash, named by its first line unless that line is only
        a precursor. Fatal and non-fatal hits are grouped separately, so a
        WARNING just before a panic can never hide the panic.
        """
        events: list[_Hit] = []
        open_burst: dict[bool, tuple[int, _Hit]] = {}  # severity -> (index in events, first hit)
        for hit in self._hits(data, start, booted):
            fatal = hit.signature.fatal
            burst = open_burst.get(fatal)
            if burst is not None and hit.line - burst[1].line <= SAME_CRASH_LINES:
                index = burst[0]
                if events[index].signature.precursor and not hit.signature.precursor:
                    events[index] = hit
                continue
            open_burst[fatal] = (len(events), hit)
            events.append(hit)
        return events

    def _unexpected_boot(self, data: bytes, offset: int, booted: bool,
                         fatal: list[int]) -> bool:
        """Whether a boot banner at `offset` is a crash: an unexplained reboot.

        It is one when the guest had booted (its boot marker came earlier, or
        the caller says the capture began after boot) and nothing since then
        explains a reboot: no reset marker (a requested reboot) and no fatal
        crash (a panic that resets the guest is reported as the panic).
        """
        since: int | None = 0 if booted else None
        for m in self.boot_marker.finditer(data, 0, offset):
            since = m.end()
        if since is None:
            return False
        if any(since <= o < offset for o in fatal):
            return False
        return self.reset_marker is None or self.reset_marker.search(data, since, offset) is None

    def _crash(self, data: bytes, hit: _Hit) -> Crash:
        return Crash(signature=hit.signature.name, excerpt=excerpt(data, hit.offset),
                     offset=hit.offset)


def clean_text(data: bytes) -> str:
    """Console bytes as readable text: escape sequences and control characters gone.

    Line ends are normalised (`\\r\\r\\n` from busybox, `\\r\\n` from Zircon)
    and a lone carriage return becomes a line break, so the result reads as
    the lines a person saw on the console.
    """
    text = _ANSI.sub(b"", data).decode("utf-8", errors="replace")
    text = re.sub(r"\r+\n", "\n", text).replace("\r", "\n")
    return _CONTROL.sub("", text)


def excerpt(data: bytes, offset: int, before: int = EXCERPT_BEFORE,
            after: int = EXCERPT_AFTER) -> str:
    """The line at `offset`, `before` lines above and `after - 1` below, cleaned for a report."""
    begin = data.rfind(b"\n", 0, offset) + 1
    for _ in range(before):
        if begin == 0:
            break
        begin = data.rfind(b"\n", 0, begin - 1) + 1
    end = offset
    for _ in range(after):
        nl = data.find(b"\n", end)
        if nl < 0:
            end = len(data)
            break
        end = nl + 1
    return clean_text(data[begin:end]).rstrip("\n")
