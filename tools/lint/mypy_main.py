"""Entry point of every `py_mypy_test` target: `mypy --strict` over one package.

mypy runs in this process, so the modules it can import are exactly this test's
runfiles: the package's own sources, the first-party packages it depends on, the
generated protobuf stubs, and the @pypi distributions it declares. Errors are reported
for the files given on the command line only; imported first-party modules are checked
by their own package's mypy target.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mypy import api


def main() -> int:
    cache_dir = Path(os.environ.get("TEST_TMPDIR", ".")) / "mypy_cache"
    stdout, stderr, status = api.run(
        [
            "--config-file=pyproject.toml",
            "--strict",
            "--follow-imports=silent",
            f"--cache-dir={cache_dir}",
            *sys.argv[1:],
        ]
    )
    sys.stdout.write(stdout)
    sys.stderr.write(stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
