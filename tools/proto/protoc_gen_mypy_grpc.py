"""The mypy-protobuf protoc plugin for typed gRPC service stubs (`--mypy_grpc_out`)."""

from __future__ import annotations

from mypy_protobuf import main

if __name__ == "__main__":
    main.grpc()
