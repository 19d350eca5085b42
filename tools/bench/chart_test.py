"""The charts are real PNG files."""

from __future__ import annotations

from pathlib import Path

from tools.bench.chart import Series, draw_auth_chart, draw_build_chart, draw_users_chart

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_users_chart_is_a_png(tmp_path: Path) -> None:
    ours = Series("platform", [0.4, 0.5, 3.0, 20.0], [0.1, 0.2, 0.3, 0.9], 180.0)
    base = Series("plain websockets", [0.05, 0.1, 1.0, 2.0], [0.001, 0.002, 0.003], 20000.0)
    path = draw_users_chart(tmp_path / "nested" / "users.png", ours, base, "4 users")
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_users_chart_tolerates_an_empty_side(tmp_path: Path) -> None:
    ours = Series("platform", [], [], 0.0)
    base = Series("plain websockets", [1.0], [0.1], 10.0)
    path = draw_users_chart(tmp_path / "users.png", ours, base, "nothing received")
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_auth_and_build_charts_are_pngs(tmp_path: Path) -> None:
    auth = draw_auth_chart(
        tmp_path / "auth.png",
        {"EdDSA": {"a": 300.0, "b": 3000.0}, "HS256": {"a": 250.0, "b": 2900.0}},
        "2 cores",
    )
    build = draw_build_chart(
        tmp_path / "build.png", {"cold": 95.0, "cached": 0.4, "touched": 20.0}, "2 cores"
    )
    assert auth.read_bytes().startswith(PNG_MAGIC)
    assert build.read_bytes().startswith(PNG_MAGIC)
