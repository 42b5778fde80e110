"""The shared progress helper: plain lines with count, rate and ETA when not a terminal."""

import io

from rich.console import Console

from orthodiff.progress import maybe_progress, progress_bar


def test_plain_lines_when_output_is_not_a_terminal():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    with progress_bar(console, "pretrain axial", 10, every=0) as advance:
        for _ in range(3):
            advance(loss=0.25)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4  # one per advance (every=0), one at the end
    assert lines[2].startswith("pretrain axial: 3/10 steps (30%), ") and "steps/s, ETA 0:00:" in lines[2]
    assert lines[2].endswith("loss 0.25")
    assert "done in 0:00:0" in lines[3] and "3/10 steps" in lines[3]


def test_no_line_before_the_interval_and_a_bar_in_a_terminal():
    out = io.StringIO()
    with progress_bar(Console(file=out, force_terminal=False), "sample", None, every=3600) as advance:
        advance(5)
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[0]]
    assert out.getvalue().startswith("sample: 5 steps, ") and "done in" in out.getvalue()
    terminal = io.StringIO()
    with progress_bar(Console(file=terminal, force_terminal=True), "sweep", 2) as advance:
        advance()
        advance()
    assert "\x1b[" in terminal.getvalue()  # drawn as a rich bar (ANSI), not as plain lines


def test_library_callbacks_pass_through():
    seen = []
    with maybe_progress(lambda n=1, **fields: seen.append((n, fields)), "ingest", 3) as advance:
        advance(2, stage="x")
    with maybe_progress(False, "ingest", 3) as advance:
        advance()
    assert seen == [(2, {"stage": "x"})]
