#!/usr/bin/env bash
# Regenerates requirements_lock.txt, hash-pinned, from requirements.in.
# The lock is resolved with the interpreter the build uses (Debian's /usr/bin/python3,
# or $SSOT_PYTHON), so environment markers match the machines that install it.
set -euo pipefail
workspace=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
python=${SSOT_PYTHON:-/usr/bin/python3}
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet pip-tools
cd "$workspace"
"$venv/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras \
  --no-emit-index-url --no-emit-find-links \
  --output-file requirements_lock.txt requirements.in
