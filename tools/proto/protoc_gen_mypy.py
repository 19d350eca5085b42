"""The mypy-protobuf protoc plugin for message stubs (`--mypy_out`)."""

from __future__ import annotations

from mypy_protobuf import main

if __name__ == "__main__":
    main.main()
