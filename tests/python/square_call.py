"""One square call with grpcio (the second, independent HTTP/2 and gRPC
implementation), optionally with a bearer token; prints the outcome as one
JSON line: {"code": "OK" | "PERMISSION_DENIED" | ..., "details": ..., "result": ...}."""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stubs  # noqa: E402

stubs.load()
import grpc  # noqa: E402
import square_pb2  # noqa: E402
import square_pb2_grpc  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--authority")
    p.add_argument("--token")
    p.add_argument("--value", type=int, default=7)
    args = p.parse_args()
    options = [("grpc.default_authority", args.authority)] if args.authority else []
    with grpc.insecure_channel(args.target, options=options) as channel:
        stub = square_pb2_grpc.SquareStub(channel)
        metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
        try:
            out = stub.Square(square_pb2.Input(value=args.value), metadata=metadata, timeout=10)
            print(json.dumps({"code": "OK", "result": out.result}))
        except grpc.RpcError as e:
            print(json.dumps({"code": e.code().name, "details": e.details()}))


if __name__ == "__main__":
    main()
