"""Test and check macros shared by every package.

- `py_pytest_test`: a py_test that runs pytest (tools/pytest/pytest_main.py) on its
  `*_test.py` sources, with JUnit XML and Bazel sharding.
- `py_mypy_test`: `mypy --strict` over a package's sources and everything they import.
- `ruff_test`: ruff lint and format check over Python files.
- `buildifier_test`: buildifier format and lint check over BUILD, .bzl and WORKSPACE files.

Every test these macros declare is tagged `block-network`: Bazel's linux-sandbox then runs
it in a network namespace of its own with only loopback, whatever
`--sandbox_default_allow_network` says (tools/remote/README.md).
"""

_PYPROJECT = "//:pyproject.toml"

def _rootpaths(files):
    return ["$(rootpaths %s)" % f for f in files]

def _absolute(label):
    """A label as written in the calling package, made absolute for comparison."""
    if label.startswith(":"):
        return "//%s%s" % (native.package_name(), label)
    if label.startswith("@") or label.startswith("//"):
        return str(Label(label)).replace("@//", "//")
    return "//%s:%s" % (native.package_name(), label)

def _no_network(kwargs):
    """kwargs["tags"] with `block-network` added: the test gets loopback and nothing else."""
    tags = kwargs.pop("tags", [])
    return tags if "block-network" in tags else tags + ["block-network"]

def _merge(deps, implicit):
    """deps plus the implicit ones it does not already name."""
    named = [_absolute(d) for d in deps]
    return deps + [d for d in implicit if _absolute(d) not in named]

def lint_files(name = "lint_files"):
    """Declares this package's `build_files` and `python_files` for the root lint tests.

    Args:
      name: unused; macros take a name by convention.
    """
    native.filegroup(
        name = "build_files",
        srcs = native.glob(["BUILD.bazel", "**/*.bzl"]),
        visibility = ["//:__pkg__"],
    )
    native.filegroup(
        name = "python_files",
        srcs = native.glob(["**/*.py"], exclude = ["**/*_pb2.py", "**/*_pb2_grpc.py"]),
        visibility = ["//:__pkg__"],
    )

def py_pytest_test(name, srcs, deps = [], data = [], args = [], size = "small", **kwargs):
    """A pytest test target. Only the `*_test.py` files in srcs are collected.

    Args:
      name: target name.
      srcs: test modules and any helper modules they import.
      deps: libraries the tests import.
      data: runtime files.
      args: extra pytest arguments.
      size: Bazel test size; stated explicitly by every caller.
      **kwargs: passed to py_test (shard_count, env, tags, timeout ...).
    """
    tests = [s for s in srcs if s.endswith("_test.py")]
    if not tests:
        fail("py_pytest_test %s: no *_test.py in srcs" % name)
    native.py_test(
        name = name,
        srcs = srcs + ["//tools/pytest:pytest_main.py"],
        main = "//tools/pytest:pytest_main.py",
        deps = _merge(deps, [
            "//tools/pytest:hypothesis_profile",
            "//tools/pytest:sharding",
            "@pypi//pytest",
            "@pypi//pytest_asyncio",
        ]),
        data = data + [_PYPROJECT],
        args = ["-c", "$(rootpath %s)" % _PYPROJECT] + _rootpaths(tests) + args,
        size = size,
        python_version = "PY3",
        srcs_version = "PY3",
        tags = _no_network(kwargs),
        **kwargs
    )

def py_mypy_test(name, srcs, deps = [], **kwargs):
    """`mypy --strict` over srcs; deps provide what they import (and their stubs)."""
    native.py_test(
        name = name,
        srcs = ["//tools/lint:mypy_main.py"],
        main = "//tools/lint:mypy_main.py",
        deps = _merge(deps, [
            "@pypi//mypy",
            "@pypi//pydantic",
        ]),
        data = srcs + [_PYPROJECT],
        args = _rootpaths(srcs),
        # mypy analyses every imported module: minutes on a loaded 2-core machine.
        size = kwargs.pop("size", "medium"),
        python_version = "PY3",
        srcs_version = "PY3",
        tags = _no_network(kwargs),
        **kwargs
    )

def ruff_test(name, srcs, **kwargs):
    """ruff check and ruff format --check over srcs, configured by pyproject.toml."""
    native.py_test(
        name = name,
        srcs = ["//tools/lint:ruff_main.py"],
        main = "//tools/lint:ruff_main.py",
        deps = ["@pypi//ruff"],
        data = srcs + [_PYPROJECT],
        args = _rootpaths(srcs),
        size = kwargs.pop("size", "small"),
        python_version = "PY3",
        srcs_version = "PY3",
        tags = _no_network(kwargs),
        **kwargs
    )

def buildifier_test(name, srcs, **kwargs):
    """buildifier -mode=check -lint=warn over srcs (BUILD, .bzl and WORKSPACE files)."""
    native.sh_test(
        name = name,
        srcs = ["//tools/lint:buildifier_test.sh"],
        data = srcs + ["@buildifier"],
        args = ["$(rootpath @buildifier)"] + _rootpaths(srcs),
        size = kwargs.pop("size", "small"),
        tags = _no_network(kwargs),
        **kwargs
    )
