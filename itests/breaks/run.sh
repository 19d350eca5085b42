#!/usr/bin/env bash
# Shows that the integration tests can fail: each *.patch here breaks user isolation in
# one place on purpose. For each, this script applies it to a scratch clone of HEAD, runs
# `tools/bazel test //itests/... --keep_going` there, lists the targets and the test cases
# that failed, and restores the clone before the next patch.
#
#   itests/breaks/run.sh [PATCH...]        (default: every *.patch in this directory)
#
# It exits non-zero if a patch no longer applies or if a break leaves every itest passing.
# The scratch clone (under ${TMPDIR:-/tmp}) has its own Bazel output base; both are removed
# when the script exits. Extra Bazel flags: BREAKS_BAZEL_FLAGS, e.g. "--jobs=1".
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
workspace=$(cd "$here/../.." && pwd)
if [ "$#" -gt 0 ]; then
  patches=("$@")
else
  patches=("$here"/*.patch)
fi
read -r -a extra_flags <<<"${BREAKS_BAZEL_FLAGS:-}"

say() { printf 'breaks: %s\n' "$*" >&2; }

scratch=$(mktemp -d "${TMPDIR:-/tmp}/ssot-breaks.XXXXXX")
cleanup() {
  if [ -x "$scratch/tools/bazel" ]; then
    (cd "$scratch" && tools/bazel clean --expunge >/dev/null 2>&1 || true)
    (cd "$scratch" && tools/bazel shutdown >/dev/null 2>&1 || true)
  fi
  rm -rf "$scratch"
}
trap cleanup EXIT

git clone -q "$workspace" "$scratch"
cd "$scratch"
testlogs=""
status=0
for patch in "${patches[@]}"; do
  name=$(basename "$patch" .patch)
  if ! git apply "$patch"; then
    say "$name: the patch no longer applies to HEAD; update it"
    status=1
    continue
  fi
  say "$name: $(git diff --stat | tail -n 1)"
  log="$scratch/.breaks-$name.log"
  set +e
  tools/bazel test //itests/... --keep_going "${extra_flags[@]}" >"$log" 2>&1
  set -e
  [ -n "$testlogs" ] || testlogs=$(tools/bazel info bazel-testlogs 2>/dev/null)
  mapfile -t failed < <(grep -E '^//[^ ]+ +FAILED' "$log" | awk '{print $1}')
  echo "== $name: ${#failed[@]} target(s) failed"
  grep -E '^Executed' "$log" || true
  for target in "${failed[@]}"; do
    dir="$testlogs/${target#//}"
    dir=${dir/://}
    echo "-- $target"
    find "$dir" -name test.xml -print0 | xargs -0 python3 -c '
import sys
import xml.etree.ElementTree as ET

names = sorted(
    {
        "{}::{}".format(case.get("classname"), case.get("name"))
        for path in sys.argv[1:]
        for case in ET.parse(path).iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    }
)
for name in names:
    print("   ", name)
print(f"    ({len(names)} failing test cases)")
'
  done
  if [ "${#failed[@]}" -eq 0 ]; then
    say "$name: every itest passed with this break: the suite does not catch it"
    status=1
  fi
  git checkout -q -- .
done
exit "$status"
