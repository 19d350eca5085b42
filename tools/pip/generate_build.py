"""Writes the BUILD files of the @pypi repository after pip has installed the lock.

Run by tools/pip.bzl inside the repository directory, with the interpreter the tests
use. For every installed distribution it writes a `py_library` in `//site-packages`
whose data are exactly the files of that distribution's RECORD (plus their precompiled
bytecode) and whose deps are the distributions its metadata requires under this
interpreter's environment markers, with the extras that anyone asked for. A package
`//<name>` aliases each library, so callers write `@pypi//pydantic`.

Only the standard library and pip's vendored `packaging` are used: nothing else is
installed in the interpreter that runs this.
"""

from __future__ import annotations

import argparse
import compileall
import os
import re
import sys
from importlib import metadata
from pathlib import Path

from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
from pip._vendor.packaging.utils import canonicalize_name

# Characters Bazel 4 accepts in a label's target name, minus the ones that are trouble.
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+=,@~-]+$")
# Files Bazel would read as package or repository boundaries inside site-packages.
_BOUNDARY_FILES = {"BUILD", "BUILD.bazel", "WORKSPACE", "WORKSPACE.bazel"}


def target_name(dist_name: str) -> str:
    """`PyJWT` -> `pyjwt`, `grpcio-tools` -> `grpcio_tools`."""
    return canonicalize_name(dist_name).replace("-", "_")


def starlark_list(items: list[str], indent: str = "        ") -> str:
    if not items:
        return "[]"
    body = "".join(f'{indent}"{item}",\n' for item in items)
    return "[\n" + body + indent[:-4] + "]"


def remove_boundary_files(site: Path) -> None:
    for root, _dirs, files in os.walk(site):
        for name in files:
            if name in _BOUNDARY_FILES:
                os.remove(os.path.join(root, name))


def record_files(dist: metadata.Distribution, site: Path) -> list[str]:
    """The distribution's installed files, relative to site-packages, with bytecode."""
    found: set[str] = set()
    for entry in dist.files or []:
        relative = str(entry)
        if relative.startswith("../../bin/"):
            # pip --target puts scripts (ruff's binary, say) in <target>/bin.
            relative = "bin/" + relative[len("../../bin/") :]
        if relative.startswith("..") or "__pycache__" in relative:
            continue
        if not _SAFE_PATH.match(relative) or not (site / relative).is_file():
            continue
        found.add(relative)
        if relative.endswith(".py"):
            path = Path(relative)
            tag = sys.implementation.cache_tag
            pyc = path.parent / "__pycache__" / f"{path.stem}.{tag}.pyc"
            if (site / pyc).is_file():
                found.add(str(pyc))
    return sorted(found)


def requested_extras(requirements_in: Path) -> dict[str, set[str]]:
    extras: dict[str, set[str]] = {}
    for raw in requirements_in.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        extras.setdefault(target_name(req.name), set()).update(req.extras)
    return extras


def dependency_edges(
    dists: dict[str, metadata.Distribution], extras: dict[str, set[str]]
) -> dict[str, set[str]]:
    """Edges between installed distributions, extras propagated to a fixed point."""
    edges: dict[str, set[str]] = {name: set() for name in dists}
    changed = True
    while changed:
        changed = False
        for name, dist in dists.items():
            wanted = {""} | extras.get(name, set())
            for text in dist.requires or []:
                try:
                    req = Requirement(text)
                except InvalidRequirement:
                    continue
                dep = target_name(req.name)
                if dep not in dists or dep == name:
                    continue
                marker = req.marker
                if marker is not None and not any(
                    marker.evaluate({"extra": extra}) for extra in wanted
                ):
                    continue
                if dep not in edges[name]:
                    edges[name].add(dep)
                    changed = True
                new_extras = set(req.extras) - extras.get(dep, set())
                if new_extras:
                    extras.setdefault(dep, set()).update(new_extras)
                    changed = True
    return edges


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--site-packages", required=True, type=Path)
    parser.add_argument("--requirements-in", required=True, type=Path)
    parser.add_argument("--python", required=True)
    args = parser.parse_args()
    site: Path = args.site_packages

    remove_boundary_files(site)
    # Precompile once here: tests run from read-only runfiles and could not cache bytecode.
    compileall.compile_dir(
        str(site),
        quiet=1,
        workers=0,
        invalidation_mode=compileall.py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )

    dists = {target_name(d.metadata["Name"]): d for d in metadata.distributions(path=[str(site)])}
    edges = dependency_edges(dists, requested_extras(args.requirements_in))

    libraries = []
    for name in sorted(dists):
        deps = [":" + dep for dep in sorted(edges[name])] + ["//:interpreter"]
        libraries.append(
            "py_library(\n"
            f'    name = "{name}",\n'
            f"    data = {starlark_list(record_files(dists[name], site))},\n"
            '    imports = ["."],\n'
            f"    deps = {starlark_list(deps)},\n"
            ")\n"
        )
        package = Path(name)
        package.mkdir(exist_ok=True)
        (package / "BUILD.bazel").write_text(
            f'alias(\n    name = "{name}",\n    actual = "//site-packages:{name}",\n'
            '    visibility = ["//visibility:public"],\n)\n'
        )
    (site / "BUILD.bazel").write_text(
        "# Generated by tools/pip/generate_build.py: one library per distribution.\n"
        'package(default_visibility = ["//visibility:public"])\n\n'
        'exports_files(glob(["bin/*"]))\n\n' + "\n".join(libraries)
    )

    version = ".".join(str(part) for part in sys.version_info[:3])
    Path("interpreter_version.txt").write_text(f"{args.python} {version}\n")
    Path("BUILD.bazel").write_text(
        f'''# Generated by tools/pip/generate_build.py.
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

package(default_visibility = ["//visibility:public"])

# The interpreter the wheels were installed with is the one every test runs with.
py_runtime(
    name = "python3_runtime",
    interpreter_path = "{args.python}",
    python_version = "PY3",
    stub_shebang = "#!{args.python}",
)

py_runtime_pair(
    name = "runtime_pair",
    py3_runtime = ":python3_runtime",
)

toolchain(
    name = "python_toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)

# Every library depends on this, so a test's inputs change with the interpreter version.
py_library(
    name = "interpreter",
    data = ["interpreter_version.txt"],
)
'''
    )
    Path("WORKSPACE").write_text('workspace(name = "pypi")\n')
    return 0


if __name__ == "__main__":
    sys.exit(main())
