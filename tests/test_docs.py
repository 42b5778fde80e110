"""The documentation is checked like code.

Every ```bash and ```python block of the guide pages (docs/guides/*.md, whoever wrote them)
runs in order, in one fresh temporary folder per page, with `orthodiff` and `python` on PATH.
A block preceded by a line `<!-- not run: the reason -->` is skipped; every such line on any
page must give its reason. The README's own blocks are run by tests/test_readme.py and
tests/test_estimators.py; `mkdocs build --strict` (in .ci/run) checks links and API pages.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
SKIP = re.compile(r"<!--\s*not run\b(.*?)-->", re.S)


def blocks(page: Path) -> list[tuple[str, str, str | None]]:
    """(language, code, skip reason or None) for every fenced block of ``page``, in order.

    A block is skipped when the last non-blank line before its fence is a not-run comment."""
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        before = text[:match.start()].rstrip().splitlines()
        previous = before[-1].strip() if before else ""
        skip = SKIP.fullmatch(previous)
        reason = skip.group(1).strip().lstrip(":").strip() if skip else None
        found.append((match.group(1), match.group(2), reason))
    return found


def guide_pages() -> list[Path]:
    return sorted((DOCS / "guides").glob("*.md"))


def test_every_not_run_block_says_why():
    pages = sorted(DOCS.rglob("*.md"))
    assert pages, "no documentation pages"
    for page in pages:
        for reason in SKIP.findall(page.read_text()):
            reason = reason.strip().lstrip(":").strip()
            assert len(reason) >= 10, f"{page.relative_to(DOCS)}: a `not run` block without its reason"


def test_the_runner_reads_skips_and_order(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# t\n\n```bash\necho one\n```\n\n<!-- not run: needs a GPU for hours -->\n```python\nx = 1\n```\n"
                    "\n```text\nplain\n```\n")
    assert blocks(page) == [("bash", "echo one\n", None), ("python", "x = 1\n", "needs a GPU for hours"),
                            ("text", "plain\n", None)]


@pytest.mark.slow
@pytest.mark.parametrize("page", guide_pages(), ids=lambda p: p.stem)
def test_guide_blocks_run(page, tmp_path):
    """The page's runnable blocks, in order, in one folder; the first failure names its block."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    ran = 0
    for number, (language, code, reason) in enumerate(blocks(page), 1):
        if reason is not None or language not in ("bash", "python"):
            continue
        command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (f"{page.name}, block {number} ({language}) failed:\n{code}\n"
                                        f"--- output ---\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        ran += 1
    if ran == 0:
        pytest.skip(f"{page.name} has no runnable block")


def test_readme_is_short_current_and_its_links_resolve():
    """The README stays a five-minute read: under 12 KB, no dated measurements (they live in
    docs/results/), every relative link points at a file, and CI runs its setup and test command."""
    root = DOCS.parent
    readme = (root / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024
    months = r"\b\d{1,2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\b"
    assert not re.search(months, readme), "a dated measurement in the README: move it to docs/results/"
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if "://" not in target:
            assert (root / target).exists(), f"README links to a missing file: {target}"
    setup, tests = FENCE.search(readme.split("## Quick start", 1)[1]).group(2).splitlines()
    ci = (root / ".ci" / "run").read_text()
    assert tests in ci.splitlines(), ".ci/run must run the README's test command"
    assert ".venv/bin/pip install torch==2.13.0" in setup and ".venv/bin/pip install --quiet torch==2.13.0" in ci
