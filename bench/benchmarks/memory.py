"""Memory readings for the benches (Linux /proc)."""

from __future__ import annotations

from pathlib import Path


def _status_mib(field: str) -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(f"{field}:"))
    return int(line.split()[1]) / 1024


def rss_mib() -> float:
    """This process's resident memory now."""
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM). Not `ru_maxrss`: on Linux that survives
    exec, so a freshly started child would report its parent's peak."""
    return _status_mib("VmHWM")
