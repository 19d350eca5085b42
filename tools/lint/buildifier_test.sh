#!/usr/bin/env bash
# The buildifier test: every BUILD, .bzl and WORKSPACE file given must be formatted and
# free of lint warnings. Usage: buildifier_test.sh BUILDIFIER FILE...
set -euo pipefail
buildifier=$1
shift
# native-py and native-sh-test ask for rules_python and rules_shell, which this offline
# Bazel 4 build does not have: the native rules are the right ones here.
exec "$buildifier" -mode=check -lint=warn -warnings=-native-py,-native-sh-test "$@"
