"""``server``: the composition root of the platform.

:mod:`server.composition` wires every service into one process (:func:`build_platform`),
serves them over gRPC (:func:`serve_grpc`), connects to them over gRPC
(:func:`connect_grpc`) and builds gateway nodes whose runs are remote
(:func:`build_gateway_stack`). :mod:`server.main` is ``//:server`` (one process, or one
role per process); :mod:`server.client` is ``//:client``.
"""
