"""A pytest plugin that makes hypothesis suitable for cached Bazel tests.

A cached test result must stay valid, so under Bazel every property test runs the same
examples each time (`derandomize`), keeps no example database in the read-only runfiles
tree, and has no per-example deadline (a loaded 2-core machine is slow, not wrong).
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "bazel",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("bazel")
