"""The map of the package: the README's layout table and grpo_helpers' docstring list every module, once, by
layer, in the same order; a module added or renamed without the map fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "grpo_helpers"


def modules() -> set[str]:
    """Every module of the package as the map names it (countdown/data.py), package __init__ files aside."""
    return {str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py") if path.name != "__init__.py"}


def readme_table() -> list[tuple[str, str]]:
    """(layer, module) for each row of the README's layout table; a row with an empty layer continues the one above."""
    section = (ROOT / "README.md").read_text().split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows, layer = [], ""
    for match in re.finditer(r"^\| ([^|]*) \| `([^`]+\.py)` \|", section, flags=re.MULTILINE):
        layer = match.group(1).strip() or layer
        rows.append((layer, match.group(2)))
    return rows


def docstring_listing() -> list[tuple[str, str]]:
    """(layer, module) as grpo_helpers/__init__.py's docstring lists them: a `Layer:` line, then indented names."""
    rows, layer = [], ""
    for line in ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text())).splitlines():
        if re.fullmatch(r"[A-Z][^:]*:", line):
            layer = line[:-1].lower()
        elif line.startswith("    ") and line.split():
            rows.append((layer, line.split()[0] + ".py"))
    return rows


def test_the_readme_maps_every_module_once():
    listed = [module for _, module in readme_table()]
    assert sorted(listed) == sorted(modules()), {"missing": modules() - set(listed), "unknown": set(listed) - modules()}
    assert len({layer for layer, _ in readme_table()}) == 5


def test_the_package_docstring_follows_the_readme():
    assert docstring_listing() == [(layer.lower(), module) for layer, module in readme_table()]
