"""The inventory counts scenarios per category and theme from the modules' code."""

from __future__ import annotations

from pathlib import Path

import pytest

from itests.inventory import Scenario, collect, report, scenarios_in


def _module(path: Path, theme: str | None, tests: list[str]) -> None:
    body = [f'THEME = "{theme}"'] if theme is not None else []
    body += [f"async def {name}() -> None:\n    pass" for name in tests]
    body.append("def helper() -> None:\n    pass")
    path.write_text("\n\n".join(body) + "\n")


def test_counts_top_level_test_functions_per_theme(tmp_path: Path) -> None:
    (tmp_path / "auth_context").mkdir()
    _module(tmp_path / "auth_context" / "one_test.py", "tokens", ["test_a", "test_b"])
    _module(tmp_path / "auth_context" / "two_test.py", "routing", ["test_c"])
    found = collect(tmp_path)
    assert found == [
        Scenario("auth_context", "tokens", "test_a"),
        Scenario("auth_context", "tokens", "test_b"),
        Scenario("auth_context", "routing", "test_c"),
    ]
    text = report(found)
    assert "A - auth & context (//itests/auth_context): 3" in text
    assert "    tokens: 2" in text
    assert "total: 3" in text


def test_a_module_with_scenarios_must_name_its_theme(tmp_path: Path) -> None:
    path = tmp_path / "x_test.py"
    _module(path, None, ["test_a"])
    with pytest.raises(ValueError, match="THEME"):
        scenarios_in(path, "auth_context")
