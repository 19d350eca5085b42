"""Entry point of the ruff test: lint and format check of the given Python files.

Runs the ruff binary that the `ruff` wheel installs (in @pypi, next to its package)
with the repository's pyproject.toml; any finding or unformatted file fails the test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ruff


def ruff_binary() -> Path:
    # pip --target puts the wheel's script in <site-packages>/bin.
    return Path(ruff.__file__).parent.parent / "bin" / "ruff"


def main() -> int:
    files = sys.argv[1:]
    if not files:
        print("ruff test: no files given", file=sys.stderr)
        return 2
    binary = str(ruff_binary())
    common = ["--config=pyproject.toml", "--no-cache"]
    lint = subprocess.run([binary, "check", *common, *files], check=False)
    fmt = subprocess.run([binary, "format", "--check", "--diff", *common, *files], check=False)
    return 1 if lint.returncode or fmt.returncode else 0


if __name__ == "__main__":
    sys.exit(main())
