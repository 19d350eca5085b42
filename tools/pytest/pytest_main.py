"""Entry point of every `py_pytest_test` target (tools/python.bzl).

Bazel runs this with the test's files as arguments. It runs pytest on them with the
repository's pyproject.toml and follows Bazel's test protocol: JUnit XML goes to
XML_OUTPUT_FILE, hypothesis runs the same examples every time (a cached result must stay
valid), and when the target is sharded (TEST_TOTAL_SHARDS) it acknowledges
sharding by touching TEST_SHARD_STATUS_FILE and runs only its own share of the tests,
so that across all shards every test runs exactly once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tools.pytest import sharding


def pytest_arguments(argv: list[str], environ: os._Environ[str] | dict[str, str]) -> list[str]:
    args = [
        "--rootdir=.",
        "-p",
        "tools.pytest.sharding",
        "-p",
        "tools.pytest.hypothesis_profile",
        *argv,
    ]
    xml_output = environ.get("XML_OUTPUT_FILE")
    if xml_output:
        args.append(f"--junitxml={xml_output}")
    temp_dir = environ.get("TEST_TMPDIR")
    if temp_dir:
        args.append(f"--basetemp={Path(temp_dir) / 'pytest'}")
    if environ.get("TESTBRIDGE_TEST_ONLY"):
        # `bazel test --test_filter=EXPR` selects tests by pytest's -k expression.
        args += ["-k", environ["TESTBRIDGE_TEST_ONLY"]]
    return args


def main() -> int:
    shard = sharding.Shard.from_environ(os.environ)
    if shard is not None:
        shard.acknowledge()
    exit_code = pytest.main(pytest_arguments(sys.argv[1:], os.environ))
    if exit_code == pytest.ExitCode.NO_TESTS_COLLECTED and shard is not None and shard.total > 1:
        # More shards than tests: an empty share is not a failure.
        return 0
    return int(exit_code)


if __name__ == "__main__":
    sys.exit(main())
