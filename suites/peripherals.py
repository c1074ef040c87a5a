"""System tests of the peripheral drivers: block, network, RTC, balloon, RNG, GPU.

Each test drives one device end to end through its Linux driver and checks what
came out on the other side, on the host where there is one: the disk image file,
a TCP server on the host, the host's clock, the VMM's balloon control. The pure
pieces (parsing guest output, judging a clock offset, choosing a static address)
are module-level functions so they can be tested without a guest.

Sharing: block powers the guest off to read its image, so it has a guest of its
own; every other test leaves the guest as it found it (the balloon is deflated
even when the test fails) and shares the environment's guest.

Metrics (JUnit properties and summary.json, for dashboards to follow run to run):
`blk_write_mb_s`, `blk_read_mb_s` (decimal MB/s of `dd` with O_DIRECT, timed by
the guest's /proc/uptime), `vmm_cpu_s_write`, `vmm_cpu_s_read` (CPU seconds the
VMM's whole process session used during each transfer, children included, since
crosvm forks device processes and the crosvm double runs QEMU as a child:
harness.hostcpu). The host's end of the network test is harness.hostnet.

Parameters (tests.json fields beside `test`, reached through `t.params`):
`blk_load_mib` (32; cut to what fits the disk), `balloon_mib` (128),
`balloon_deadline_s` (30), `rtc_tolerance_s` (2).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import re
import secrets
import shlex
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import anyio

from harness.disks import DISK_PATTERN_OFFSET, host_pattern
from harness.errors import HarnessError
from harness.exits import ExitKind
from harness.expected_devices import platform
from harness.hostcpu import session_cpu_seconds
from harness.hostnet import tap_address, tcp_exchange
from harness.overlays import read_disk
from harness.suite import Requirements, Skip, TestContext, guest_test

LINUX = ("linux",)
T = TypeVar("T")

# -- helpers shared by the tests --------------------------------------------------------------


async def poll(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], *,
               deadline_s: float, interval_s: float = 0.2) -> tuple[T, bool, float]:
    """Call `probe` until `done(value)` or the deadline; (last value, done, seconds taken).

    Devices settle asynchronously (a balloon inflates page batch by page batch), so a
    test waits for the state it wants with a deadline instead of sleeping a guess.
    """
    start = time.monotonic()
    while True:
        value = await probe()
        if done(value):
            return value, True, time.monotonic() - start
        if time.monotonic() - start >= deadline_s:
            return value, False, time.monotonic() - start
        await anyio.sleep(interval_s)


# -- virtio-blk ---------------------------------------------------------------------------------

GUEST_PATTERN_OFFSET = 2 << 20  # where the guest writes (the host's pattern sits at 1 MiB)
LOAD_OFFSET_MIB = 4  # where the throughput transfer starts, clear of both patterns
SECTOR = 512


def guest_pattern(token: str, index: int) -> bytes:
    """What the guest writes on disk `index`: one text line, zero-padded to a sector
    (`dd conv=sync` pads with zeros)."""
    return f"HARNESS-GUEST-PATTERN {token} disk{index}\n".encode().ljust(SECTOR, b"\0")


_DISK_LINE = re.compile(r"^DISK (?P<dev>\S+) (?P<md5>[0-9a-f]{32})(?: (?P<head>.*))?$")


def parse_disk_reads(text: str) -> dict[str, tuple[str, str]]:
    """`DISK vda MD5 HEAD` lines -> {device: (md5, first printable bytes)}."""
    out = {}
    for line in text.splitlines():
        if m := _DISK_LINE.match(line.strip()):
            out[m["dev"]] = (m["md5"], (m["head"] or "").strip())
    return out


_ELAPSED = re.compile(r"ELAPSED (?P<a>\d+\.\d+) (?P<b>\d+\.\d+) (?P<status>\d+)")


def parse_elapsed(text: str) -> tuple[float, int]:
    """(guest seconds between the two /proc/uptime reads, dd's exit status)."""
    m = _ELAPSED.search(text)
    if m is None:
        raise ValueError(f"no ELAPSED line in {text[-500:]!r}")
    return float(m["b"]) - float(m["a"]), int(m["status"])


def mb_per_s(nbytes: int, seconds: float) -> float:
    """Decimal MB/s (dd's unit). /proc/uptime ticks in 10 ms, so a faster transfer is
    reported as taking one tick rather than as infinitely fast."""
    return nbytes / 1e6 / max(seconds, 0.01)


@guest_test(requires=Requirements(profiles=LINUX, devices=("virtio-blk",)), timeout_s=240)
async def test_block(t: TestContext) -> None:
    """virtio-blk: the guest reads the host's pattern, writes its own that the host reads back
    from the image after power-off; write and read throughput under load, with the VMM's CPU."""
    g = t.guest
    disks = list(g.paths.disks)
    assert disks, "the device config has virtio-blk, but the runner attached no disk image"
    sector = DISK_PATTERN_OFFSET // SECTOR
    reads = parse_disk_reads(await g.check(
        "for d in /sys/block/vd*; do n=${d##*/}; "
        f"s=$(dd if=/dev/$n bs={SECTOR} skip={sector} count=1 2>/dev/null | md5sum); "
        f"h=$(dd if=/dev/$n bs={SECTOR} skip={sector} count=1 2>/dev/null | head -c 60 "
        "| tr -c 'A-Za-z0-9 ._-' '?'); echo \"DISK $n ${s%% *} $h\"; done"))
    assert reads, "the guest has no virtio block device (/sys/block/vd*)"

    # The host wrote host_pattern(env, i) on disk i; find which guest device holds each.
    device_of: dict[int, str] = {}
    for i in range(len(disks)):
        want = hashlib.md5(host_pattern(t.env.name, i)).hexdigest()
        dev = next((d for d, (md5, _) in sorted(reads.items()) if md5 == want), None)
        if dev is not None:
            device_of[i] = dev
        seen = ", ".join(f"{d}: {head!r}" for d, (_, head) in sorted(reads.items()))
        t.case(f"disk{i}", dev is not None,
               f"read by /dev/{dev}" if dev else f"no guest disk holds the host's pattern "
               f"for disk{i} at {DISK_PATTERN_OFFSET}; the guest read {seen}",
               suite="host-pattern")
    # A disk whose pattern was not found still gets written, in guest order, so the
    # host-side check below says whether writes reach it.
    leftover = iter(d for d in sorted(reads) if d not in device_of.values())
    for i in range(len(disks)):
        if i not in device_of:
            with contextlib.suppress(StopIteration):
                device_of[i] = next(leftover)

    await _block_load(t, device_of.get(0) or sorted(reads)[0])

    token = secrets.token_hex(8)
    out_sector = GUEST_PATTERN_OFFSET // SECTOR
    writes = "; ".join(
        f"printf 'HARNESS-GUEST-PATTERN {token} disk{i}\\n' | dd of=/dev/{dev} bs={SECTOR} "
        f"seek={out_sector} conv=sync,fsync 2>/dev/null || echo WRITE-FAILED {dev}"
        for i, dev in sorted(device_of.items()))
    out = await g.check(f"{writes}; sync")
    assert "WRITE-FAILED" not in out, f"a guest write failed:\n{out}"

    info = await g.shutdown(timeout=60)
    assert info.kind == ExitKind.STOP, f"guest power-off ended as {info.kind}: {info.explanation}"
    for i, disk in enumerate(disks):
        pattern = guest_pattern(token, i)
        # A raw image, or a restored guest's qcow2 overlay on its snapshot's base disk.
        got = read_disk(disk, GUEST_PATTERN_OFFSET, len(pattern))
        t.case(f"disk{i}", got == pattern,
               f"{disk.name} holds the guest's pattern at {GUEST_PATTERN_OFFSET} "
               f"(written via /dev/{device_of.get(i)})" if got == pattern else
               f"{disk.name} at {GUEST_PATTERN_OFFSET} holds {got[:60]!r}, not the guest's "
               f"pattern {pattern[:60]!r}", suite="guest-pattern")


async def _block_load(t: TestContext, dev: str) -> None:
    """Write then read `blk_load_mib` MiB (default 32) with O_DIRECT, timing each in the
    guest and sampling the VMM session's CPU time around it."""
    g = t.guest
    size_mib = int(t.env.devices.option("virtio-blk", "size_mib", 64))
    load = int(t.params.get("blk_load_mib", 32))
    if LOAD_OFFSET_MIB + load > size_mib:
        t.note(f"blk_load_mib {load} does not fit a {size_mib} MiB disk after "
               f"{LOAD_OFFSET_MIB} MiB: using {size_mib - LOAD_OFFSET_MIB}")
        load = size_mib - LOAD_OFFSET_MIB
    assert load > 0, f"a {size_mib} MiB disk leaves no room for the load transfer"
    nbytes = load << 20
    t.prop("blk_load_mib", load)
    transfers = {
        "write": f"dd if=/dev/zero of=/dev/{dev} bs=1M count={load} seek={LOAD_OFFSET_MIB} "
                 "oflag=direct",
        "read": f"dd if=/dev/{dev} of=/dev/null bs=1M count={load} skip={LOAD_OFFSET_MIB} "
                "iflag=direct",
    }
    sid = g.vmm.pid if g.vmm is not None else None
    for what, dd in transfers.items():
        cpu0 = session_cpu_seconds(sid) if sid else None
        wall0 = time.monotonic()
        result = await g.run(f"read a _ </proc/uptime; {dd} 2>&1; s=$?; read b _ </proc/uptime; "
                             "echo \"ELAPSED $a $b $s\"", timeout=120)
        wall = time.monotonic() - wall0
        cpu = session_cpu_seconds(sid) - cpu0 if sid and cpu0 is not None else None
        guest_s, status = parse_elapsed(result.output)
        rate = mb_per_s(nbytes, guest_s)
        t.case(what, status == 0,
               f"{load} MiB in {guest_s:.2f} s (guest), {wall:.2f} s (host): {rate:.1f} MB/s"
               + (f", VMM CPU {cpu:.2f} s" if cpu is not None else "")
               if status == 0 else f"`{dd}` exited {status}:\n{result.output[-1000:]}",
               suite="load")
        t.prop(f"blk_{what}_mb_s", f"{rate:.1f}")
        t.prop(f"blk_{what}_guest_s", f"{guest_s:.2f}")
        if cpu is not None:
            t.prop(f"vmm_cpu_s_{what}", f"{cpu:.2f}")


# -- virtio-net ---------------------------------------------------------------------------------

NET_BYTES = 64 << 10
# busybox udhcpc runs this with the lease in its environment; it configures the address
# and leaves the lease where the harness can read it. Written with printf (one line).
UDHCPC_SCRIPT = (
    "#!/bin/sh\n"
    "case \"$1\" in\n"
    "deconfig) ip addr flush dev \"$interface\"; ip link set \"$interface\" up ;;\n"
    "bound|renew) ip addr flush dev \"$interface\"; "
    "ip addr add \"$ip/${mask:-24}\" dev \"$interface\"; "
    "echo \"LEASE ip=$ip mask=${mask:-24} router=$router server=$serverid\" "
    ">/tmp/harness-lease ;;\n"
    "esac\n"
)
_LEASE = re.compile(r"LEASE ip=(?P<ip>\S+) mask=(?P<mask>\d+) router=(?P<router>\S*)")
_NET_IF = re.compile(r"^IF (?P<name>\S+) (?P<driver>\S+)$", re.MULTILINE)


def parse_lease(text: str) -> tuple[str, int, str] | None:
    """(address, prefix length, first router) from the script's LEASE line."""
    m = _LEASE.search(text)
    if m is None:
        return None
    return m["ip"], int(m["mask"]), m["router"].split()[0] if m["router"] else ""


def static_peer(host: ipaddress.IPv4Interface) -> ipaddress.IPv4Interface:
    """An address for the guest on the host's TAP subnet: the host's neighbour."""
    net = host.network
    for candidate in (host.ip + 1, host.ip - 1):
        if candidate in net and candidate not in (net.network_address, net.broadcast_address):
            return ipaddress.IPv4Interface(f"{candidate}/{net.prefixlen}")
    raise ValueError(f"no room for a guest next to {host} on {net}")


@guest_test(requires=Requirements(profiles=LINUX, devices=("virtio-net",)), shares_guest=True,
            timeout_s=120)
async def test_network(t: TestContext) -> None:
    """virtio-net: the guest gets an address and exchanges 64 KiB each way with a host server."""
    g = t.guest
    ifs = {m["name"]: m["driver"] for m in _NET_IF.finditer(await g.check(
        "for n in /sys/class/net/*; do [ -e $n/device/driver ] && "
        "echo \"IF ${n##*/} $(basename $(readlink $n/device/driver))\"; done; true"))}
    iface = next((n for n, d in sorted(ifs.items()) if d == "virtio_net"), None)
    assert iface, f"no interface driven by virtio_net; the guest has {ifs or 'none'}"

    tap = t.env.tap
    if tap:
        # TAP (crosvm has no user-mode networking): the host side is the TAP's address.
        host = tap_address(str(tap))
        if host is None:
            raise Skip(f"TAP '{tap}' has no IPv4 address on this host, so nothing on the "
                       f"host can answer the guest: give it one before the run (ip addr add "
                       f"192.168.250.1/24 dev {tap}; ip link set {tap} up)")
        guest_if = static_peer(host)
        await g.check(f"ip addr flush dev {iface}; ip addr add {guest_if} dev {iface}; "
                      f"ip link set {iface} up")
        address, peer, bind = str(guest_if), str(host.ip), str(host.ip)
        t.case("address", True, f"{iface} {guest_if} (static, TAP {tap} is {host})", suite="net")
    else:
        # User-mode networking: DHCP from the VMM; the router it names is the host.
        script = shlex.quote(UDHCPC_SCRIPT.replace("\\", "\\\\").replace("\n", "\\n"))
        out = await g.run(f"printf {script} >/tmp/harness-udhcpc && chmod +x /tmp/harness-udhcpc"
                          f" && rm -f /tmp/harness-lease && udhcpc -i {iface} -n -q -f -t 5 "
                          f"-T 1 -s /tmp/harness-udhcpc 2>&1; cat /tmp/harness-lease",
                          timeout=60)
        lease = parse_lease(out.output)
        ok = lease is not None and bool(lease[2])
        t.case("address", ok,
               f"{iface} {lease[0]}/{lease[1]} via DHCP, router {lease[2]}" if ok and lease else
               f"udhcpc got no lease with a router on {iface}:\n{out.output[-1500:]}",
               suite="net")
        if lease is None or not ok:
            return
        address, peer, bind = f"{lease[0]}/{lease[1]}", lease[2], "127.0.0.1"
    t.prop("net_address", address)

    reply = os.urandom(NET_BYTES)
    async with tcp_exchange(bind, reply, NET_BYTES) as seen:
        port = seen.port
        result = await g.run(
            f"head -c {NET_BYTES} /dev/urandom >/tmp/harness-net.out && "
            f"nc -w 10 {peer} {port} </tmp/harness-net.out >/tmp/harness-net.in; "
            "echo NC $?; md5sum /tmp/harness-net.out /tmp/harness-net.in", timeout=60)
    sums = {path: md5 for md5, path in (line.split() for line in result.output.splitlines()
                                         if re.fullmatch(r"[0-9a-f]{32}\s+\S+", line.strip()))}
    sent, got = sums.get("/tmp/harness-net.out"), sums.get("/tmp/harness-net.in")
    up = hashlib.md5(bytes(seen.received[:NET_BYTES])).hexdigest()
    where = f"{address} -> {peer}:{port} (host server on {bind}, peer {seen.peer or 'none'})"
    t.case("guest-to-host", len(seen.received) == NET_BYTES and up == sent,
           f"{NET_BYTES} bytes, md5 {up}, {where}" if up == sent else
           f"host received {len(seen.received)} bytes (md5 {up}), guest sent md5 {sent}; "
           f"{where} {seen.error}\n{result.output[-800:]}", suite="net")
    down = hashlib.md5(reply).hexdigest()
    t.case("host-to-guest", got == down,
           f"{NET_BYTES} bytes, md5 {down}" if got == down else
           f"guest received md5 {got}, host sent {down}; {where}\n{result.output[-800:]}",
           suite="net")


# -- RTC ------------------------------------------------------------------------------------------

# The RTC drivers an arch's VMMs need, for an engine harness/expected_devices.py does not
# model; a modelled engine's RTC names its own driver there (QEMU virt's PL031 is
# rtc-pl031; crosvm's arm64 PL030 is rtc-pl030, which Debian's arm64 kernel does not build).
# Linux names the device after its driver in /sys/class/rtc/rtcN/name.
RTC_DRIVERS: Mapping[str, tuple[str, ...]] = {
    "x86_64": ("rtc_cmos",),
    "arm64": ("rtc-pl031", "rtc-pl030"),
}


def clock_offset(guest_s: int, host_before: float, host_after: float) -> tuple[float, float]:
    """Bounds of (guest clock - host clock) from a whole-second guest reading taken at some
    instant between the two host readings: the true offset lies in (lo, hi)."""
    return guest_s - host_after, guest_s + 1 - host_before


def within(bounds: tuple[float, float], tolerance: float) -> bool:
    """Whether an offset of at most `tolerance` (either way) is consistent with `bounds`."""
    lo, hi = bounds
    return lo <= tolerance and hi >= -tolerance


@guest_test(requires=Requirements(profiles=LINUX, devices=("rtc",)), shares_guest=True,
            timeout_s=60)
async def test_rtc(t: TestContext) -> None:
    """RTC: the arch's RTC device drives rtc0; system time and the RTC agree with the host's
    UTC within 2 s (`rtc_tolerance_s`)."""
    g = t.guest
    tolerance = float(t.params.get("rtc_tolerance_s", 2.0))
    model = platform(t.env.engine, t.env.arch).get("rtc")
    drivers = (model.driver,) if model and model.driver else RTC_DRIVERS.get(t.env.arch, ())
    found = await g.run("cat /sys/class/rtc/rtc0/name")
    if found.status != 0 and model is not None and model.driver:
        # The VMM's RTC may be there with no driver to make it rtc0 (crosvm's arm64 PL030
        # under a kernel without CONFIG_RTC_DRV_PL030): nothing to test, and not a failure.
        driver = await g.run(f"ls -d /sys/bus/*/drivers/{model.driver}")
        if driver.status != 0:
            raise Skip(f"{t.env.engine}'s {t.env.arch} RTC is {model.model}, and the guest "
                       f"kernel ({g.image.kernel_version or g.image.name}) has no driver for "
                       f"it ({model.driver}; {model.kernel_config} is not set): no RTC to "
                       f"test")
    assert found.status == 0, f"the guest has no rtc0:\n{found.output[-500:]}"
    name = found.output.strip()
    want = (f"; expected {drivers[0]} ({model.model})" if model and model.driver else
            f"; expected one of {', '.join(drivers)} on {t.env.arch}")
    t.case("device", name.split(" ")[0] in drivers,
           f"rtc0 is {name!r}" + ("" if name.split(" ")[0] in drivers else want), suite="rtc")
    t.prop("rtc_name", name)

    # The smallest round trip of three bounds the offset best.
    best: tuple[float, int, int, float, float] | None = None
    for _ in range(3):
        before = time.time()
        out = await g.check("date -u +%s; cat /sys/class/rtc/rtc0/since_epoch")
        after = time.time()
        values = [int(v) for v in out.split() if v.isdigit()]
        assert len(values) == 2, f"expected two integers (date, since_epoch), got {out!r}"
        if best is None or after - before < best[0]:
            best = (after - before, values[0], values[1], before, after)
        if after - before < 0.5:
            break
    assert best is not None
    rtt, system, hardware, before, after = best
    for what, value in (("system-time", system), ("hardware-clock", hardware)):
        bounds = clock_offset(value, before, after)
        mid = (bounds[0] + bounds[1]) / 2
        t.case(what, within(bounds, tolerance),
               f"guest - host = {mid:+.2f} s (between {bounds[0]:+.2f} and {bounds[1]:+.2f}, "
               f"round trip {rtt:.2f} s, tolerance {tolerance:g} s)", suite="rtc")
        t.prop(f"rtc_{what.replace('-', '_')}_offset_s", f"{mid:+.2f}")


# -- virtio-balloon -------------------------------------------------------------------------------

_MEMINFO = re.compile(r"^(MemTotal|MemFree|MemAvailable):\s+(\d+) kB", re.MULTILINE)


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo lines -> {field: bytes} for MemTotal, MemFree, MemAvailable."""
    return {k: int(v) << 10 for k, v in _MEMINFO.findall(text)}


def shrunk_by(before: Mapping[str, int], now: Mapping[str, int], size: int) -> str | None:
    """Which meminfo field shows the balloon taking `size` (90% of it), if any.

    Linux 6.1's virtio_balloon lowers MemTotal (it takes pages out of the managed
    count) unless the device offers DEFLATE_ON_OOM, in which case only free and
    available memory drop. MemTotal is preferred: nothing else moves it.
    """
    for field in ("MemTotal", "MemAvailable"):
        if before.get(field, 0) - now.get(field, 0) >= 0.9 * size:
            return field
    return None


async def _balloon_actual(t: TestContext) -> int | None:
    """What the VMM says the balloon holds, for the message only: crosvm's balloon_stats
    waits for the guest driver's report, so a slow or silent guest is noted, not failed."""
    try:
        return (await t.guest.balloon_stats()).get("balloon_actual")
    except HarnessError as e:
        t.note(f"the VMM's balloon statistics did not come: {e}")
        return None


@guest_test(requires=Requirements(profiles=LINUX, devices=("virtio-balloon",)),
            shares_guest=True, timeout_s=120)
async def test_balloon(t: TestContext) -> None:
    """virtio-balloon: inflating through the VMM shrinks the guest's memory; deflating
    gives it back. The balloon is always deflated at the end (the guest is shared)."""
    g = t.guest
    size = int(t.params.get("balloon_mib", 128)) << 20
    deadline = float(t.params.get("balloon_deadline_s", 30.0))

    async def meminfo() -> dict[str, int]:
        return parse_meminfo(await g.check("cat /proc/meminfo"))

    before = await meminfo()
    assert "MemTotal" in before, "no MemTotal in /proc/meminfo"
    assert size < before["MemTotal"], (
        f"balloon_mib {size >> 20} is not below the guest's {before['MemTotal'] >> 20} MiB")
    t.prop("balloon_mib", size >> 20)
    field: str | None = None
    try:
        await g.balloon(size)
        now, ok, took = await poll(meminfo, lambda m: shrunk_by(before, m, size) is not None,
                                   deadline_s=deadline)
        field = shrunk_by(before, now, size)
        host = await _balloon_actual(t)
        drop = {k: (before[k] - now.get(k, 0)) >> 20 for k in before}
        t.case("inflate", ok,
               f"{field} dropped by {drop[field or 'MemTotal']} MiB in {took:.1f} s "
               f"(balloon {size >> 20} MiB; VMM says it holds "
               f"{'?' if host is None else int(host) >> 20} MiB)" if ok else
               f"after {took:.1f} s the guest's memory dropped by {drop} MiB, not by "
               f"{size >> 20} MiB (VMM balloon_actual {host})", suite="balloon")
        t.prop("balloon_inflate_s", f"{took:.2f}")
        t.prop("balloon_field", field or "none")
    except BaseException:
        # Deflate whatever happened: the next test on this guest needs its memory back.
        with anyio.CancelScope(shield=True), anyio.move_on_after(15), \
                contextlib.suppress(Exception):
            await g.balloon(0)
        raise
    await g.balloon(0)
    watched = field or "MemTotal"
    now, ok, took = await poll(
        meminfo, lambda m: m.get(watched, 0) >= before[watched] - 0.1 * size,
        deadline_s=deadline)
    t.case("deflate", ok,
           f"{watched} back to {now.get(watched, 0) >> 20} MiB (was {before[watched] >> 20}) "
           f"in {took:.1f} s", suite="balloon")
    t.prop("balloon_deflate_s", f"{took:.2f}")


# -- virtio-rng -----------------------------------------------------------------------------------


def parse_od_bytes(text: str) -> bytes:
    """`od -An -v -tx1` output -> the bytes it shows."""
    return bytes(int(tok, 16) for tok in re.findall(r"\b[0-9a-f]{2}\b", text))


@guest_test(requires=Requirements(profiles=LINUX, devices=("virtio-rng",)), shares_guest=True,
            timeout_s=60)
async def test_rng(t: TestContext) -> None:
    """virtio-rng: hw_random's current source is the virtio device and yields random bytes."""
    g = t.guest
    current = (await g.check("cat /sys/class/misc/hw_random/rng_current")).strip()
    t.case("current", current.startswith("virtio_rng."),
           f"hw_random uses {current!r}" + ("" if current.startswith("virtio_rng.") else
                                            ", not a virtio_rng device"), suite="rng")
    result = await g.run("head -c 64 /dev/hwrng | od -An -v -tx1", timeout=30)
    data = parse_od_bytes(result.output) if result.status == 0 else b""
    t.case("bytes", len(data) == 64 and len(set(data)) > 1,
           f"64 bytes, {len(set(data))} distinct: {data[:8].hex()}..." if len(data) == 64 else
           f"/dev/hwrng gave {len(data)} bytes (status {result.status}): "
           f"{result.output[-300:]!r}", suite="rng")


# -- virtio-gpu -----------------------------------------------------------------------------------

_VIRTIO_DEV = re.compile(r"^VIRTIO (?P<dev>\S+) (?P<type>0x[0-9a-f]+) (?P<driver>\S*)$",
                         re.MULTILINE)
_CONNECTOR = re.compile(r"^/sys/class/drm/(?P<conn>card\d+-[^/]+)/(?P<attr>status|modes)"
                        r":(?P<value>.*)$", re.MULTILINE)


def parse_gpu(text: str) -> tuple[list[tuple[str, str]], dict[str, dict[str, list[str]]]]:
    """(virtio GPU devices as (device, driver), {connector: {status: [...], modes: [...]}})."""
    gpus = [(m["dev"], m["driver"].rsplit("/", 1)[-1]) for m in _VIRTIO_DEV.finditer(text)
            if int(m["type"], 16) == 16]
    connectors: dict[str, dict[str, list[str]]] = {}
    for m in _CONNECTOR.finditer(text):
        connectors.setdefault(m["conn"], {}).setdefault(m["attr"], []).append(
            m["value"].strip())
    return gpus, connectors


@guest_test(requires=Requirements(profiles=LINUX, devices=("virtio-gpu",)), shares_guest=True,
            timeout_s=60)
async def test_gpu(t: TestContext) -> None:
    """virtio-gpu: the virtio_gpu driver binds and a DRM connector appears, connected, with
    modes. Needs a kernel with virtio_gpu (Debian's cloud kernel has none)."""
    g = t.guest
    if g.capabilities.get("virtio_gpu") is False:
        raise Skip(f"the guest kernel ({g.image.kernel_version or g.image.name}) is built "
                   f"without virtio_gpu")
    out = await g.check(
        "for v in /sys/bus/virtio/devices/*; do [ -e $v/device ] || continue; "
        "echo \"VIRTIO ${v##*/} $(cat $v/device) $(readlink $v/driver)\"; done; "
        "grep -H . /sys/class/drm/card*-*/status /sys/class/drm/card*-*/modes 2>/dev/null; true")
    gpus, connectors = parse_gpu(out)
    bound = [dev for dev, driver in gpus if driver == "virtio_gpu"]
    t.case("driver", bool(bound),
           f"virtio_gpu drives {', '.join(bound)}" if bound else
           f"no virtio GPU device bound to virtio_gpu (GPU devices: {gpus or 'none'})",
           suite="gpu")
    live = {c: a for c, a in connectors.items() if "connected" in a.get("status", [])}
    with_modes = {c: a["modes"] for c, a in live.items() if a.get("modes")}
    t.case("connector", bool(with_modes),
           "; ".join(f"{c}: connected, {len(m)} modes (first {m[0]})"
                     for c, m in sorted(with_modes.items())) if with_modes else
           f"no connected DRM connector with modes; connectors: {connectors or 'none'}",
           suite="gpu")
    if with_modes:
        t.prop("gpu_connectors", ",".join(sorted(with_modes)))
