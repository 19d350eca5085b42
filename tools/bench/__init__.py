"""Benchmarks of the platform: concurrent WebSocket users, token validation, the build.

Each benchmark is a ``py_binary`` (``tools/bazel run //tools/bench:users``, ``:auth``,
``:build``) that runs on one machine over loopback, prints one JSON document (the machine,
library versions, the parameters and the results) and draws a PNG chart. Speed goals live
here, never in unit tests; see ``tools/bench/README.md`` for how to read the figures.
"""
