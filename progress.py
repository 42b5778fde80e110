"""Progress of long work, one helper for every command.

Library functions take a ``progress`` callback (``advance(n=1, **fields)``: ``n`` more units
done, ``fields`` such as ``loss=0.12`` shown beside the count); only the command line builds
one, with :func:`progress_bar`. In a terminal that is a rich bar; when the output goes to a
log, a pipe or ``nohup``, it is a plain line every ``every`` seconds with the count, the rate
and the time left, and one line at the end, so a log always says how far a job got.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

Advance = Callable[..., None]
PLAIN_EVERY_S = 15.0


def _fields(fields: dict) -> str:
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class PlainProgress:
    """Counts units and prints ``description: done/total (pct), rate, ETA`` at most every
    ``every`` seconds: the non-terminal form of the bar."""

    def __init__(self, console: Console, description: str, total: int | None, unit: str, every: float = PLAIN_EVERY_S):
        self.console, self.description, self.total, self.unit, self.every = console, description, total, unit, every
        self.done, self.fields = 0, {}
        self.start = self.last = time.perf_counter()

    def line(self, final: bool = False) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.done / elapsed
        count = f"{self.done}/{self.total} {self.unit}" if self.total else f"{self.done} {self.unit}"
        if self.total:
            count += f" ({100 * self.done / self.total:.0f}%)"
        parts = [f"{self.description}: {count}", f"{rate:.3g} {self.unit}/s"]
        if final:
            parts.append(f"done in {_duration(elapsed)}")
        elif self.total and rate > 0:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        else:
            parts.append(f"elapsed {_duration(elapsed)}")
        if self.fields:
            parts.append(_fields(self.fields))
        return ", ".join(parts)

    def __call__(self, n: int = 1, **fields) -> None:
        self.done += n
        self.fields.update(fields)
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            self.console.print(self.line(), highlight=False, soft_wrap=True)


@contextmanager
def progress_bar(console: Console | None, description: str, total: int | None, unit: str = "steps",
                 every: float = PLAIN_EVERY_S) -> Iterator[Advance]:
    """Yield ``advance(n=1, **fields)``: a transient rich bar when ``console`` is a terminal,
    plain periodic lines otherwise (``total=None``: count without a percentage or ETA)."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        plain = PlainProgress(console, description, total, unit, every)
        yield plain
        console.print(plain.line(final=True), highlight=False, soft_wrap=True)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields) -> None:
            bar.update(task, advance=n, **({"info": _fields(fields)} if fields else {}))

        yield advance


def no_progress(n: int = 1, **fields) -> None:
    """The callback of a caller that wants no progress."""


@contextmanager
def maybe_progress(progress: bool | Advance | None, description: str, total: int | None,
                   unit: str = "steps") -> Iterator[Advance]:
    """For library functions whose ``progress`` is a flag or a callback: a callback is used as
    it is, ``True`` draws :func:`progress_bar` on stderr, ``False``/``None`` reports nothing."""
    if callable(progress):
        yield progress
    elif progress:
        with progress_bar(None, description, total, unit) as advance:
            yield advance
    else:
        yield no_progress
