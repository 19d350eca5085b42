"""Tests of UnifiedIDManager: format, ordering, monotonicity, uniqueness, strict parsing."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import re
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from context.errors import InvalidIDError
from context.ids import (
    BODY_LENGTH,
    MAX_TIMESTAMP_MS,
    IDKind,
    ParsedID,
    UnifiedIDManager,
    compose_id,
    get_id_manager,
    is_valid_id,
    new_id,
    new_request_id,
    new_run_id,
    new_thread_id,
    new_user_id,
    parse_id,
    validate_id,
)
from context.testing import unified_ids

_ID_SHAPE = re.compile(r"(?P<prefix>[a-z]+)_[0-7][0-9a-hjkmnp-tv-z]{25}")
_FIXED_MS = 1_750_000_000_000


def _fixed_clock() -> int:
    return _FIXED_MS


def test_generated_ids_have_kind_prefix_and_ulid_layout() -> None:
    manager = UnifiedIDManager()
    before = datetime.now(UTC) - timedelta(milliseconds=1)
    for kind in IDKind:
        value = manager.generate(kind)
        match = _ID_SHAPE.fullmatch(value)
        assert match is not None, value
        assert match["prefix"] == kind.value
        parsed = manager.parse(value)
        assert parsed.kind is kind
        assert parsed.raw == value
        assert before <= parsed.timestamp <= datetime.now(UTC)
        assert parsed.timestamp.tzinfo is UTC
    assert {kind.value for kind in IDKind} == {
        "usr", "thr", "run", "req", "ws", "tool", "agt", "ses", "conn", "svc", "msg", "note", "evt"
    }  # fmt: skip


def test_ids_sort_by_creation_time() -> None:
    ticks = iter(range(1_000_000, 1_000_000 + 5_000, 5))
    manager = UnifiedIDManager(clock=lambda: next(ticks))
    ids = [manager.generate(IDKind.EVENT) for _ in range(1_000)]
    assert sorted(ids) == ids
    stamps = [manager.parse(value).timestamp_ms for value in ids]
    assert stamps == list(range(1_000_000, 1_000_000 + 5_000, 5))


def test_ids_within_one_millisecond_are_strictly_increasing() -> None:
    manager = UnifiedIDManager(clock=_fixed_clock)
    ids = [manager.generate(IDKind.REQUEST) for _ in range(2_000)]
    assert all(a < b for a, b in itertools.pairwise(ids))
    parsed = [manager.parse(value) for value in ids]
    assert {p.timestamp_ms for p in parsed} == {_FIXED_MS}
    steps = [b.randomness - a.randomness for a, b in itertools.pairwise(parsed)]
    assert all(1 <= step <= 2**32 + 1 for step in steps)


def test_clock_stepping_back_keeps_ids_increasing() -> None:
    times = iter([5_000, 5_000, 4_000, 3_000, 5_000, 6_000])
    manager = UnifiedIDManager(clock=lambda: next(times))
    ids = [manager.generate(IDKind.RUN) for _ in range(6)]
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert manager.parse(ids[-1]).timestamp_ms == 6_000


def test_random_part_overflow_carries_into_timestamp() -> None:
    manager = UnifiedIDManager(clock=_fixed_clock, random_bits=lambda bits: (1 << bits) - 1)
    first = manager.parse(manager.generate(IDKind.TOOL))
    second = manager.parse(manager.generate(IDKind.TOOL))
    assert first.timestamp_ms == _FIXED_MS and first.randomness == 2**80 - 1
    assert second.timestamp_ms == _FIXED_MS + 1
    assert second.raw > first.raw


def test_generate_refuses_clock_outside_id_range_and_unknown_kind() -> None:
    with pytest.raises(InvalidIDError):
        UnifiedIDManager(clock=lambda: -1).generate(IDKind.USER)
    with pytest.raises(InvalidIDError):
        UnifiedIDManager(clock=lambda: MAX_TIMESTAMP_MS + 1).generate(IDKind.USER)
    with pytest.raises(InvalidIDError):
        UnifiedIDManager().generate("usr_")  # type: ignore[arg-type]  # hostile kind on purpose


def test_module_helpers_use_the_default_manager() -> None:
    assert parse_id(new_user_id()).kind is IDKind.USER
    assert parse_id(new_thread_id()).kind is IDKind.THREAD
    assert parse_id(new_run_id()).kind is IDKind.RUN
    assert parse_id(new_request_id()).kind is IDKind.REQUEST
    assert parse_id(new_id(IDKind.WEBSOCKET)).kind is IDKind.WEBSOCKET
    first, second = new_id(IDKind.AGENT), get_id_manager().generate(IDKind.AGENT)
    assert first < second


@settings(max_examples=200)
@given(
    kind=st.sampled_from(IDKind),
    ms=st.integers(0, MAX_TIMESTAMP_MS),
    rnd=st.integers(0, 2**80 - 1),
)
def test_compose_and_parse_are_inverse(kind: IDKind, ms: int, rnd: int) -> None:
    value = compose_id(kind, ms, rnd)
    parsed = parse_id(value)
    assert parsed == ParsedID(
        kind=kind,
        timestamp=datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms),
        randomness=rnd,
        raw=value,
    )
    assert parsed.timestamp_ms == ms
    assert validate_id(value, kind) == value
    assert is_valid_id(value) and is_valid_id(value, kind)


@settings(max_examples=200)
@given(value=st.text(max_size=64) | st.binary(max_size=40) | unified_ids().map(lambda v: v[:-1]))
def test_parse_and_validate_never_crash_on_arbitrary_input(value: str | bytes) -> None:
    valid = is_valid_id(value)
    assert isinstance(valid, bool)
    if valid:
        assert validate_id(value) == value
    else:
        with pytest.raises(InvalidIDError):
            validate_id(value)
        with pytest.raises(InvalidIDError):
            parse_id(value)


class _HostileStr(str):
    __slots__ = ()

    def partition(self, sep: str) -> tuple[str, str, str]:
        raise RuntimeError("boom")

    def __len__(self) -> int:
        raise RuntimeError("boom")


@pytest.mark.parametrize(
    "value",
    [None, 0, 1.5, b"usr_01jdq3v9x4s7k2m8n6p0r5t1wz", ["u"], {"a": 1}, object(), _HostileStr("x")],
    ids=["none", "int", "float", "bytes", "list", "dict", "object", "hostile-str"],
)
def test_is_valid_never_raises_on_any_type(value: object) -> None:
    assert is_valid_id(value) is False
    assert is_valid_id(value, IDKind.USER) is False
    with pytest.raises(InvalidIDError):
        validate_id(value)


_GOOD = compose_id(IDKind.USER, _FIXED_MS, 12345)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "usr",
        "usr_",
        "_" + _GOOD[4:],
        _GOOD.upper(),
        "USR" + _GOOD[3:],
        _GOOD[:-1],
        _GOOD + "0",
        _GOOD[:-1] + "i",  # Crockford alias, not canonical
        _GOOD[:-1] + "l",
        _GOOD[:-1] + "o",
        _GOOD[:-1] + "u",
        _GOOD[:-1] + "-",
        _GOOD + "\n",
        " " + _GOOD,
        "usx" + _GOOD[3:],
        "usr-" + _GOOD[4:],
        "usr_8" + _GOOD[5:],  # more than 128 bits
        "usr_7zzzzzzzzzzzzzzzzzzzzzzzzz",  # timestamp beyond year 9999
        "usr_" + "0" * 10_000,
        "usr_01jdq3v9x4s7k2m8n6p0r5t1w\u0417",
    ],
)
def test_malformed_ids_are_rejected(value: str) -> None:
    assert not is_valid_id(value)
    with pytest.raises(InvalidIDError) as caught:
        parse_id(value)
    assert len(str(caught.value)) < 200  # never echoes a huge value


def test_validate_checks_the_kind() -> None:
    run_id = new_run_id()
    assert validate_id(run_id, IDKind.RUN) == run_id
    assert not is_valid_id(run_id, IDKind.USER)
    with pytest.raises(InvalidIDError, match="RUN ID, expected a USER ID"):
        validate_id(run_id, IDKind.USER)
    assert validate_id(run_id, "run") == run_id  # type: ignore[arg-type]  # plain prefix str
    assert not is_valid_id(run_id, "nope")  # type: ignore[arg-type]  # unknown kind
    with pytest.raises(InvalidIDError, match="unknown ID kind"):
        validate_id(run_id, "nope")  # type: ignore[arg-type]  # unknown kind


def test_many_threads_share_one_manager_without_duplicates() -> None:
    manager = UnifiedIDManager()
    results: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def work(out: list[str]) -> None:
        start.wait()
        out.extend(manager.generate(IDKind.MESSAGE) for _ in range(3_000))

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [value for out in results for value in out]
    assert len(set(every)) == len(every) == 24_000
    for out in results:
        assert out == sorted(out)


_CHILD_SCRIPT = """
import sys
from context.ids import IDKind, new_id
sys.stdout.write("ready\\n")
sys.stdout.flush()
sys.stdin.readline()
ids = [new_id(IDKind.EVENT) for _ in range(int(sys.argv[1]))]
sys.stdout.write("\\n".join(ids) + "\\n")
"""


def test_ids_are_unique_across_two_processes_generating_concurrently() -> None:
    count = 20_000
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    children = [
        subprocess.Popen(  # fixed argv: this interpreter and a literal script
            [sys.executable, "-c", _CHILD_SCRIPT, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n"
        for child in children:  # release both at once
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=120)[0].split() for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert [child.returncode for child in children] == [0, 0]
    for ids in outputs:
        assert len(ids) == count
        assert all(a < b for a, b in itertools.pairwise(ids))  # monotonic per process
        assert all(is_valid_id(value, IDKind.EVENT) for value in ids)
    every = outputs[0] + outputs[1]
    assert len(set(every)) == 2 * count


def _generate_in_child(manager: UnifiedIDManager, conn: Connection) -> None:
    conn.send(manager.generate(IDKind.RUN))
    conn.close()


def test_forked_child_does_not_continue_from_parents_last_id() -> None:
    manager = UnifiedIDManager(clock=_fixed_clock)
    last = manager.parse(manager.generate(IDKind.RUN))
    receiver, sender = multiprocessing.get_context("fork").Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(
        target=_generate_in_child, args=(manager, sender)
    )
    child.start()
    child_id = manager.parse(receiver.recv())
    child.join(timeout=30)
    assert child.exitcode == 0
    parent_next = manager.parse(manager.generate(IDKind.RUN))
    # The parent continues with a small step; the child drew fresh randomness instead.
    assert 1 <= parent_next.randomness - last.randomness <= 2**32 + 1
    assert not 1 <= child_id.randomness - last.randomness <= 2**32 + 1
    assert child_id.raw != parent_next.raw
    assert len(child_id.raw) == len(last.raw) == 4 + BODY_LENGTH
