"""The sharding plugin deals every test to exactly one shard.

This module is itself run sharded (shard_count = 3 in BUILD.bazel): each test writes
nothing and asserts only on pure functions, so the union of the three shards' JUnit
reports is the whole module, once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tools.pytest.sharding import Shard


@given(
    node_ids=st.lists(st.text(min_size=1, max_size=20), unique=True, max_size=60),
    total=st.integers(min_value=2, max_value=8),
)
def test_every_node_lands_in_exactly_one_shard(node_ids: list[str], total: int) -> None:
    shares = [Shard(index=i, total=total, status_file=None).select(node_ids) for i in range(total)]
    assert sorted(node for share in shares for node in share) == sorted(node_ids)


@given(node_ids=st.lists(st.text(min_size=1, max_size=20), unique=True, max_size=60))
def test_selection_ignores_collection_order(node_ids: list[str]) -> None:
    shard = Shard(index=1, total=3, status_file=None)
    assert shard.select(node_ids) == shard.select(list(reversed(node_ids)))


def test_shares_differ_in_size_by_at_most_one() -> None:
    node_ids = [f"t{i}" for i in range(10)]
    sizes = [len(Shard(index=i, total=4, status_file=None).select(node_ids)) for i in range(4)]
    assert max(sizes) - min(sizes) <= 1


def test_no_sharding_without_total_shards() -> None:
    assert Shard.from_environ({}) is None
    assert Shard.from_environ({"TEST_TOTAL_SHARDS": "1", "TEST_SHARD_INDEX": "0"}) is None


def test_from_environ_reads_bazel_protocol(tmp_path: Path) -> None:
    status = tmp_path / "status"
    shard = Shard.from_environ(
        {"TEST_TOTAL_SHARDS": "3", "TEST_SHARD_INDEX": "2", "TEST_SHARD_STATUS_FILE": str(status)}
    )
    assert shard == Shard(index=2, total=3, status_file=str(status))
    shard.acknowledge()
    assert status.exists()


def test_index_outside_range_is_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        Shard.from_environ({"TEST_TOTAL_SHARDS": "2", "TEST_SHARD_INDEX": "2"})
