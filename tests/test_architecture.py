"""Imports between subpackages point the way docs/development/architecture.md draws them.

Every `import` statement is read from the source (module level and inside functions, since
lazy imports are still dependencies) and mapped to the part of the package it names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("catalogs", "featurestore", "backbone", "heads", "supervised", "personas", "radiomics", "evaluation")
# leaf modules anyone may use (they import only each other)
SHARED = ("errors", "files", "tables", "devices", "progress", "faults", "training", "outputs", "options", "pages")

# Which parts each part may import (besides itself and SHARED). "orthodiff" is the package
# root (`orthodiff.open_store`, `orthodiff.__version__`); "tree" the module behind `open_store`.
ALLOWED = {
    "shared": set(),
    "catalogs": set(),
    "featurestore": {"catalogs", "backbone", "orthodiff"},  # extraction (tier 1) runs the backbone
    "backbone": {"catalogs"},  # networks, schedules, checkpoints: pretraining takes opened volumes
    "heads": {"catalogs", "featurestore", "orthodiff", "personas", "radiomics"},  # their readers only (transitive test)
    "supervised": {"catalogs", "featurestore", "backbone", "heads", "evaluation", "orthodiff"},  # biomarkers of its masks
    "personas": {"catalogs", "featurestore", "backbone", "orthodiff"},  # inpainting runs the healthy backbone (tier 1)
    "radiomics": {"catalogs", "featurestore", "personas"},  # features of images, personas and residuals
    "evaluation": {"catalogs", "featurestore", "heads"},  # measures masks, trains nothing of tier 1
    "tree": {"catalogs", "featurestore", "personas", "radiomics"},  # `open_store`: every kind's reader, side by side
    "orthodiff": {"featurestore", "tree"},
    "cli": {"catalogs", "featurestore", "backbone", "heads", "supervised", "personas", "radiomics", "evaluation", "demo"},
    "demo": {"catalogs", "featurestore", "backbone", "heads", "supervised"},
    "__main__": {"cli"},
}


def part_of(rel: Path) -> str:
    """The part a source file (path relative to the package root) belongs to."""
    if len(rel.parts) > 1:
        return rel.parts[0]
    if rel.stem == "__init__":
        return "orthodiff"
    return "shared" if rel.stem in SHARED else rel.stem


def target_of(module: str) -> str | None:
    """The part that an absolute module name `orthodiff....` belongs to (None: not ours)."""
    parts = module.split(".")
    if parts[0] != "orthodiff":
        return None
    if len(parts) == 1:
        return "orthodiff"
    return "shared" if parts[1] in SHARED else parts[1]


def imports(path: Path, root: Path) -> list[str]:
    """Absolute names of the orthodiff modules `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ["orthodiff", *path.relative_to(root).parent.parts]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if base == "orthodiff":  # `from orthodiff import cli` names a module, `open_store` the root
                names += [f"orthodiff.{a.name}" if (root / f"{a.name}.py").exists() or (root / a.name).is_dir()
                          else "orthodiff" for a in node.names]
            else:
                names.append(base)
    return [n for n in names if n == "orthodiff" or n.startswith("orthodiff.")]


def sources(root: Path = ROOT) -> list[Path]:
    return sorted([*root.glob("*.py"), *(p for sub in SUBPACKAGES for p in (root / sub).rglob("*.py"))])


def edges(root: Path = ROOT) -> set[tuple[str, str, str, str]]:
    """(from part, to part, file, module) for every import that crosses parts."""
    out = set()
    for path in sources(root):
        rel = path.relative_to(root)
        source = part_of(rel)
        for module in imports(path, root):
            target = target_of(module)
            if target is not None and target != source and not (target == "shared" and source != "shared"):
                out.add((source, target, rel.as_posix(), module))
    return out


def forbidden(root: Path = ROOT) -> list[str]:
    return sorted(
        f"{file}: imports {module} ({source} -> {target})"
        for source, target, file, module in edges(root) if target not in ALLOWED.get(source, set())
    )


def test_every_import_between_parts_is_allowed():
    assert forbidden() == [], "forbidden imports (see docs/development/architecture.md)"


def test_no_cycle_between_parts():
    """Subpackages form a DAG (backbone below featurestore: pretraining is handed opened
    volumes). The package root is a facade (`open_store`, `__version__`), not a part."""
    graph: dict[str, set[str]] = {}
    for source, target, _, _ in edges():
        if source in SUBPACKAGES and target in SUBPACKAGES:
            graph.setdefault(source, set()).add(target)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(t == goal or (t not in seen and reaches(t, goal, seen | {t})) for t in graph.get(start, ()))

    assert [p for p in graph if reaches(p, p, {p})] == []


def test_the_graph_is_the_one_documented():
    """docs/development/architecture.md lists the edges between parts as they are; it is kept in step."""
    drawn = (ROOT / "docs" / "development" / "architecture.md").read_text()
    for source, target in {(s, t) for s, t, _, _ in edges() if s in SUBPACKAGES and t in SUBPACKAGES}:
        assert f"{source} -> {target}" in drawn


@pytest.mark.parametrize("source, target", [("heads", "backbone"), ("featurestore", "heads"), ("catalogs", "featurestore"),
                                            ("heads", "supervised"), ("errors", "catalogs"),
                                            ("backbone", "featurestore"), ("training", "heads")])
def test_a_forbidden_import_is_caught(tmp_path, source, target):
    """The rules bite: a (lazy) import across a forbidden edge is reported with its file."""
    path = tmp_path / f"{source}.py" if source in SHARED else tmp_path / source / "probe.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"def f():\n    from orthodiff.{target}.x import y\n")
    (tmp_path / "heads").mkdir(exist_ok=True)
    rel = path.relative_to(tmp_path).as_posix()
    part = "shared" if source in SHARED else source
    assert forbidden(tmp_path) == [f"{rel}: imports orthodiff.{target}.x ({part} -> {target})"]


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(("orthodiff", *parts))


def module_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the orthodiff modules importing it runs: what it imports (module level and
    inside functions), each resolved to a module of ours (`from a.b import c` is `a.b.c` when
    `c` is a submodule), plus the packages above each (their `__init__` runs first)."""
    files = {module_name(p, root): p for p in sources(root)}
    graph = {}
    for name, path in files.items():
        targets = set()
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("orthodiff") and not node.level:
                targets |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        targets |= set(imports(path, root))
        resolved = set()
        for target in targets:
            parts = target.split(".")
            resolved |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & files.keys()
        graph[name] = resolved - {name}
    return graph


# the reader of each stored kind: what tier-2 code opens the store with
READERS = ("orthodiff.featurestore.features", "orthodiff.featurestore.volumes", "orthodiff.personas.reader",
           "orthodiff.radiomics.reader", "orthodiff.tree")


def tier_breaches(root: Path = ROOT, banned=("backbone", "supervised")) -> list[str]:
    """For each module of `heads` (and each reader) that reaches a banned part through any
    chain of imports, one chain that does (the shortest)."""
    graph, out = module_graph(root), []
    for start in sorted(m for m in graph if m.split(".")[1:2] == ["heads"] or m in READERS):
        paths, queue = {start: [start]}, [start]
        while queue:
            module = queue.pop(0)
            if module.split(".")[1:2] and module.split(".")[1] in banned:
                out.append(" -> ".join(paths[module]))
                break
            for nxt in sorted(graph.get(module, ())):
                if nxt not in paths:
                    paths[nxt] = [*paths[module], nxt]
                    queue.append(nxt)
    return out


def test_tier_two_never_reaches_a_tier_one_network():
    """No module of `heads`, and no reader of a stored kind, reaches `backbone` or
    `supervised` through its imports, followed transitively (a lazy import inside a
    function counts: it runs when that function does). On main before the readers were
    split off it failed: heads.fingerprint_cohort -> personas.store -> backbone."""
    assert tier_breaches() == []


def test_a_transitive_breach_is_caught(tmp_path):
    """heads -> featurestore is allowed, featurestore -> backbone too, but together they
    let tier 2 run a network: the transitive check names the chain."""
    for rel, text in {"heads/probe.py": "from orthodiff.featurestore.reader import x\n",
                      "featurestore/reader.py": "def f():\n    from orthodiff.backbone import unet\n",
                      "backbone/unet.py": ""}.items():
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert forbidden(tmp_path) == []
    assert tier_breaches(tmp_path) == [
        "orthodiff.heads.probe -> orthodiff.featurestore.reader -> orthodiff.backbone.unet"]
