"""Print a context, a child of it and its ``x-ssot-context`` encoding.

``tools/bazel run //context:demo``: a quick look at what travels between services until the
server exists.
"""

from __future__ import annotations

import json
import sys

from context import (
    UserExecutionContext,
    context_scope,
    current_context,
    new_user_id,
    parse_id,
)
from context.proto_codec import (
    CONTEXT_METADATA_KEY,
    decode_context_metadata,
    encode_context_metadata,
)


def main() -> int:
    root = UserExecutionContext.from_request(
        new_user_id(), agent_context={"agent": "triage"}, audit_metadata={"client": "demo"}
    )
    child = root.create_child_context("search_documents", additional_agent_context={"k": 3})
    encoded = encode_context_metadata(child)
    if decode_context_metadata(encoded) != child:
        raise SystemExit("the encoded context did not decode to the same context")
    with context_scope(child):
        current = current_context()
    out = sys.stdout
    out.write("root context:\n" + json.dumps(root.to_dict(), indent=2) + "\n")
    out.write("child context:\n" + json.dumps(child.to_dict(), indent=2) + "\n")
    parsed = parse_id(root.user_id)
    out.write(f"user_id kind={parsed.kind.name} created={parsed.timestamp.isoformat()}\n")
    out.write(f"correlation_id: {current.correlation_id}\n")
    out.write(f"{CONTEXT_METADATA_KEY}: {encoded} ({len(encoded)} bytes)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
