"""`scenario_test`: one integration-test module (one theme) as one py_test target."""

load("//tools:python.bzl", "py_pytest_test")

# What every scenario module may use: the harness and the composition root.
_COMMON_DEPS = [
    "//itests:itests_pkg",
    "//itests/harness",
    "//server",
]

def scenario_test(name, srcs, deps = [], size = "medium", **kwargs):
    """A theme's scenarios: a py_pytest_test over srcs with the harness and //server.

    Args:
      name: target name (the theme's module without `_test.py`, by convention).
      srcs: the theme's `*_test.py` and any helper modules of this category.
      deps: further libraries the module imports.
      size: Bazel test size (stated per theme; medium by default).
      **kwargs: passed on (shard_count, tags, env ...).
    """
    py_pytest_test(
        name = name,
        srcs = srcs,
        deps = deps + [d for d in _COMMON_DEPS if d not in deps],
        size = size,
        **kwargs
    )
