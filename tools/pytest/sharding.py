"""Bazel test sharding for pytest: shard i of n keeps the tests whose index is i mod n.

Test items are ordered by their node id before they are dealt out, so every shard sees
the same order and each test lands in exactly one shard.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Shard:
    index: int
    total: int
    status_file: str | None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Shard | None:
        total = int(environ.get("TEST_TOTAL_SHARDS", "0") or 0)
        if total <= 1:
            return None
        index = int(environ.get("TEST_SHARD_INDEX", "0"))
        if not 0 <= index < total:
            raise ValueError(f"TEST_SHARD_INDEX={index} is outside 0..{total - 1}")
        return cls(index=index, total=total, status_file=environ.get("TEST_SHARD_STATUS_FILE"))

    def acknowledge(self) -> None:
        """Tells Bazel this runner supports sharding (the test protocol's status file)."""
        if self.status_file:
            Path(self.status_file).touch()

    def select(self, node_ids: list[str]) -> set[str]:
        ordered = sorted(node_ids)
        return {node for i, node in enumerate(ordered) if i % self.total == self.index}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    shard = Shard.from_environ(os.environ)
    if shard is None:
        return
    keep = shard.select([item.nodeid for item in items])
    deselected = [item for item in items if item.nodeid not in keep]
    items[:] = [item for item in items if item.nodeid in keep]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
