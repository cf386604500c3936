"""Generates the Python gRPC stubs for weft's protos (grpcio-tools) into a
cache directory and puts it on sys.path."""

import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(ROOT, "crates", "api", "proto")


def load():
    from grpc_tools import protoc
    import grpc_tools

    out = os.path.join(tempfile.gettempdir(), f"weft-py-stubs-{os.getuid()}-{os.getpid()}")
    os.makedirs(out, exist_ok=True)
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    files = ["grpc/testing/empty.proto", "grpc/testing/messages.proto", "grpc/testing/test.proto", "square.proto"]
    rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if rc != 0:
        raise SystemExit(f"protoc failed ({rc})")
    for d in ("grpc", os.path.join("grpc", "testing")):
        open(os.path.join(out, d, "__init__.py"), "a").close()
    # The generated modules live in the package `grpc.testing`, inside
    # grpcio's own `grpc` package: extend its search path to find them.
    import grpc

    grpc.__path__.append(os.path.join(out, "grpc"))
    sys.path.insert(0, out)
    return out
