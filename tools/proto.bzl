"""gRPC code generation: `.proto` -> `_pb2.py`, `_pb2_grpc.py` and their `.pyi` stubs.

protoc is the one inside grpcio-tools from @pypi, so generated code always matches the
protobuf runtime the tests use; the stubs come from mypy-protobuf (typed messages and
typed grpc.aio service stubs). Proto files import each other by workspace path
(`import "context/context.proto";`) and declare `package ssot.<name>.v1;`.
"""

SsotProtoInfo = provider(
    doc = "The .proto sources of a py_grpc_library and of everything it imports.",
    fields = {"sources": "depset of .proto Files"},
)

_SUFFIXES = {
    "py": ["_pb2.py", "_pb2_grpc.py"],
    "pyi": ["_pb2.pyi", "_pb2_grpc.pyi"],
}

def _py_grpc_gen_impl(ctx):
    outputs = {"py": [], "pyi": []}
    for src in ctx.files.srcs:
        if src.owner.workspace_root:
            fail("py_grpc_library only compiles protos of this workspace: %s" % src)
        stem = src.basename[:-len(".proto")]
        for kind, suffixes in _SUFFIXES.items():
            for suffix in suffixes:
                outputs[kind].append(ctx.actions.declare_file(stem + suffix, sibling = src))

    sources = depset(
        ctx.files.srcs,
        transitive = [dep[SsotProtoInfo].sources for dep in ctx.attr.deps],
    )
    out_dir = ctx.bin_dir.path
    args = ctx.actions.args()
    args.add("--proto_path=.")
    args.add("--python_out=" + out_dir)
    args.add("--grpc_python_out=" + out_dir)
    args.add("--plugin=protoc-gen-mypy=" + ctx.executable._protoc_gen_mypy.path)
    args.add("--plugin=protoc-gen-mypy_grpc=" + ctx.executable._protoc_gen_mypy_grpc.path)
    args.add("--mypy_out=" + out_dir)
    args.add("--mypy_grpc_out=" + out_dir)
    args.add_all(ctx.files.srcs)
    ctx.actions.run(
        executable = ctx.executable._protoc,
        arguments = [args],
        inputs = sources,
        outputs = outputs["py"] + outputs["pyi"],
        tools = [
            ctx.attr._protoc_gen_mypy[DefaultInfo].files_to_run,
            ctx.attr._protoc_gen_mypy_grpc[DefaultInfo].files_to_run,
        ],
        mnemonic = "ProtocPython",
        progress_message = "Generating Python gRPC code for %s" % ctx.label,
    )
    return [
        DefaultInfo(files = depset(outputs["py"] + outputs["pyi"])),
        OutputGroupInfo(py = depset(outputs["py"]), pyi = depset(outputs["pyi"])),
        SsotProtoInfo(sources = sources),
    ]

_py_grpc_gen = rule(
    implementation = _py_grpc_gen_impl,
    attrs = {
        "deps": attr.label_list(providers = [SsotProtoInfo]),
        "srcs": attr.label_list(allow_files = [".proto"], mandatory = True),
        "_protoc": attr.label(
            default = "//tools/proto:protoc",
            executable = True,
            cfg = "exec",
        ),
        "_protoc_gen_mypy": attr.label(
            default = "//tools/proto:protoc_gen_mypy",
            executable = True,
            cfg = "exec",
        ),
        "_protoc_gen_mypy_grpc": attr.label(
            default = "//tools/proto:protoc_gen_mypy_grpc",
            executable = True,
            cfg = "exec",
        ),
    },
)

def py_grpc_library(name, srcs, deps = [], **kwargs):
    """A py_library of the generated messages, services and their stubs.

    Args:
      name: library name; the generated files are in `name + "_gen"`.
      srcs: .proto files of this package.
      deps: other py_grpc_library targets (full labels) whose protos srcs import.
      **kwargs: passed to the py_library (visibility ...).
    """
    _py_grpc_gen(
        name = name + "_gen",
        srcs = srcs,
        deps = [dep + "_gen" for dep in deps],
    )
    native.filegroup(
        name = name + "_py",
        srcs = [":" + name + "_gen"],
        output_group = "py",
    )
    native.filegroup(
        name = name + "_pyi",
        srcs = [":" + name + "_gen"],
        output_group = "pyi",
    )
    native.py_library(
        name = name,
        srcs = [":" + name + "_py"],
        data = [":" + name + "_pyi"],
        deps = deps + [
            "@pypi//grpcio",
            "@pypi//protobuf",
            "@pypi//types_grpcio",
            "@pypi//types_protobuf",
        ],
        **kwargs
    )
