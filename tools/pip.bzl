"""Third-party Python for the build: the hash-pinned lock, installed offline-safe.

`pip_repository` installs `requirements_lock.txt` with
`pip install --no-deps --require-hashes --only-binary=:all: --target ...` using the
interpreter the tests run with, then generates one `py_library` per distribution
(`@pypi//pydantic`, `@pypi//pyjwt`, ...) with the dependency edges between
distributions taken from each wheel's metadata, so a package declares exactly what it
uses and gets nothing else in its runfiles. It also defines the `py_runtime` toolchain
for that same interpreter, so the wheels and the tests can never disagree about it.

The interpreter is Debian's `/usr/bin/python3` unless `SSOT_PYTHON` names another one.
"""

_DEFAULT_PYTHON = "/usr/bin/python3"

def _fail_with(result, what):
    fail("%s failed (exit %d):\n%s\n%s" % (what, result.return_code, result.stdout, result.stderr))

def _pip_repository_impl(rctx):
    python = rctx.os.environ.get("SSOT_PYTHON", rctx.attr.python_interpreter)
    if not python.startswith("/"):
        found = rctx.which(python)
        if found == None:
            fail("SSOT_PYTHON=%s is not on PATH" % python)
        python = str(found)
    if not rctx.path(python).exists:
        fail("no Python interpreter at %s: run tools/bazel, which installs python3" % python)

    lock = rctx.path(rctx.attr.requirements_lock)
    direct = rctx.path(rctx.attr.requirements_in)
    generator = rctx.path(rctx.attr._generator)

    check = rctx.execute([python, "-m", "pip", "--version"])
    if check.return_code != 0:
        fail("%s has no pip: install Debian's python3-pip (tools/bazel does)" % python)

    rctx.report_progress("installing the hash-pinned wheels")
    result = rctx.execute(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--require-hashes",
            "--only-binary=:all:",
            "--no-compile",
            "--target",
            "site-packages",
            "--requirement",
            str(lock),
        ],
        timeout = 1800,
        quiet = True,
    )
    if result.return_code != 0:
        _fail_with(result, "pip install of %s" % lock)

    rctx.report_progress("generating one py_library per distribution")
    result = rctx.execute(
        [
            python,
            str(generator),
            "--site-packages",
            "site-packages",
            "--requirements-in",
            str(direct),
            "--python",
            python,
        ],
        timeout = 900,
        quiet = True,
    )
    if result.return_code != 0:
        _fail_with(result, "generating the @%s BUILD files" % rctx.name)

pip_repository = repository_rule(
    implementation = _pip_repository_impl,
    attrs = {
        "python_interpreter": attr.string(default = _DEFAULT_PYTHON),
        "requirements_in": attr.label(allow_single_file = True, mandatory = True),
        "requirements_lock": attr.label(allow_single_file = True, mandatory = True),
        "_generator": attr.label(
            default = "//tools/pip:generate_build.py",
            allow_single_file = True,
        ),
    },
    environ = ["SSOT_PYTHON"],
)
