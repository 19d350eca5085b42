"""Counts the integration scenarios per category and per theme, from the code itself.

Every category package (``itests/<category>/``) holds one test module per theme; the
module's ``THEME`` constant names the theme, and every top-level ``test_*`` function in it
is one scenario (a scenario that runs in both compositions, in-process and over gRPC, is
still one scenario). The modules are read with ``ast``, not imported, so this runs without
any service or database.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

CATEGORIES: dict[str, str] = {
    "auth_context": "A - auth & context",
    "agent_tools": "B - agent execution & tools",
    "websocket_events": "C - WebSocket & events",
    "data_isolation": "D - data access & isolation",
}


@dataclass(frozen=True)
class Scenario:
    category: str
    theme: str
    name: str


def scenarios_in(path: Path, category: str) -> list[Scenario]:
    tree = ast.parse(path.read_text(), filename=str(path))
    theme: str | None = None
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "THEME" for target in node.targets
        ):
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                theme = node.value.value
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
            "test_"
        ):
            names.append(node.name)
    if names and theme is None:
        raise ValueError(f"{path}: scenario module without a THEME constant")
    return [Scenario(category, theme or "", name) for name in names]


def collect(root: Path) -> list[Scenario]:
    found: list[Scenario] = []
    for category in CATEGORIES:
        for path in sorted((root / category).glob("*_test.py")):
            found += scenarios_in(path, category)
    return found


def report(scenarios: list[Scenario]) -> str:
    lines: list[str] = []
    per_category = Counter(s.category for s in scenarios)
    per_theme = Counter((s.category, s.theme) for s in scenarios)
    for category, title in CATEGORIES.items():
        lines.append(f"{title} (//itests/{category}): {per_category[category]}")
        for (cat, theme), count in sorted(per_theme.items()):
            if cat == category:
                lines.append(f"    {theme}: {count}")
    lines.append(f"total: {len(scenarios)}")
    return "\n".join(lines)


def main() -> int:
    root = Path(__file__).parent
    if len(sys.argv) > 1:
        root = Path(sys.argv[1])
    print(report(collect(root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
