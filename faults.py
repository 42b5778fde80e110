"""Deterministic crash points for kill drills.

`ORTHODIFF_FAULT=<point>` ends the process abruptly (like `kill -9`: no cleanup, no
`finally`) the first time it reaches `fault("<point>")`; `<point>@<n>` ends it on the n-th
time. Tests use this to stop a job between two steps of creating or writing a store.
"""

from __future__ import annotations

import os
from collections import Counter

ENV = "ORTHODIFF_FAULT"
EXIT_CODE = 86
_hits: Counter = Counter()


def fault(point: str) -> None:
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition("@")
    if name != point:
        return
    _hits[point] += 1
    if _hits[point] == int(nth or 1):
        os._exit(EXIT_CODE)
