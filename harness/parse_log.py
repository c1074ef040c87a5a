"""`harness parse`: re-read a saved serial log into crashes and cases, without a VM.

As with kunit.py's parser, a result can then be reproduced (or a parser fix
checked) from the log alone. The crash scan runs on the raw bytes, exactly
as the live console's does; test output is parsed from the decoded text.
"""

from __future__ import annotations

from typing import Any

from harness import parsers
from harness.errors import ConfigError
from harness.profiles import PROFILE_NAMES, get_profile
from harness.profiles.base import clean_text
from harness.profiles.zircon import strip_klog_prefix
from harness.results import Status


def parse_log(data: bytes, *, profile: str = "linux", fmt: str | None = None,
              booted: bool = False) -> dict[str, Any]:
    """Crashes and cases in `data`.

    `fmt` names the test output format (one of `parsers.FORMATS`); without
    it the format is detected. `booted=True` says the log starts after the
    guest booted (a mid-run capture), so a boot banner in it counts as an
    unexpected reboot.
    """
    if profile not in PROFILE_NAMES:
        raise ConfigError("arguments", None, "profile",
                          f"unknown profile {profile!r} (known: {', '.join(PROFILE_NAMES)})")
    if fmt is not None and fmt not in parsers.FORMATS:
        raise ConfigError("arguments", None, "format",
                          f"unknown format {fmt!r} (known: {', '.join(parsers.FORMATS)})")
    guest = get_profile(profile)
    crashes = guest.find_crashes(data, booted=booted)
    text = clean_text(data)
    if profile == "zircon":
        text = strip_klog_prefix(text)
    name, cases = parsers.parse(text, fmt)
    totals = {s.value: 0 for s in Status}
    for case in cases:
        totals[case.status.value] += 1
    return {
        "profile": profile,
        "crashes": [
            {"signature": c.signature, "excerpt": c.excerpt, "offset": c.offset} for c in crashes
        ],
        "format": name,
        "cases": [c.to_json() for c in cases],
        "totals": totals,
    }
