"""protoc from grpcio-tools, with the well-known types (google/protobuf/*.proto) on the path."""

from __future__ import annotations

import sys
from importlib import resources

from grpc_tools import protoc


def main() -> int:
    well_known = resources.files("grpc_tools") / "_proto"
    return int(protoc.main(["protoc", f"--proto_path={well_known}", *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
