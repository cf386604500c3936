"""A gRPC interop TestService server in Python (grpcio): the second,
independent HTTP/2 and gRPC implementation weft is checked against."""

import argparse
import sys
import time
from concurrent import futures
import os

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stubs  # noqa: E402

stubs.load()
import grpc  # noqa: E402
from grpc.testing import empty_pb2, messages_pb2, test_pb2_grpc  # noqa: E402

ECHO_INITIAL = "x-grpc-test-echo-initial"
ECHO_TRAILING = "x-grpc-test-echo-trailing-bin"


def echo_metadata(context):
    md = dict(context.invocation_metadata())
    if ECHO_INITIAL in md:
        context.send_initial_metadata(((ECHO_INITIAL, md[ECHO_INITIAL]),))
    if ECHO_TRAILING in md:
        context.set_trailing_metadata(((ECHO_TRAILING, md[ECHO_TRAILING]),))


def payload(size):
    return messages_pb2.Payload(body=b"\0" * size)


def maybe_status(request, context):
    if request.HasField("response_status") and request.response_status.code != 0:
        context.abort(grpc.StatusCode(_code(request.response_status.code)), request.response_status.message)


def _code(n):
    for c in grpc.StatusCode:
        if c.value[0] == n:
            return c.value
    raise ValueError(n)


class TestService(test_pb2_grpc.TestServiceServicer):
    def EmptyCall(self, request, context):
        echo_metadata(context)
        return empty_pb2.Empty()

    def UnaryCall(self, request, context):
        echo_metadata(context)
        maybe_status(request, context)
        return messages_pb2.SimpleResponse(payload=payload(request.response_size), hostname="python")

    def StreamingOutputCall(self, request, context):
        echo_metadata(context)
        for p in request.response_parameters:
            if p.interval_us:
                time.sleep(p.interval_us / 1e6)
            yield messages_pb2.StreamingOutputCallResponse(payload=payload(p.size))
        maybe_status(request, context)

    def StreamingInputCall(self, request_iterator, context):
        echo_metadata(context)
        total = sum(len(r.payload.body) for r in request_iterator)
        return messages_pb2.StreamingInputCallResponse(aggregated_payload_size=total)

    def FullDuplexCall(self, request_iterator, context):
        echo_metadata(context)
        for request in request_iterator:
            maybe_status(request, context)
            for p in request.response_parameters:
                if p.interval_us:
                    time.sleep(p.interval_us / 1e6)
                yield messages_pb2.StreamingOutputCallResponse(payload=payload(p.size))

    def HalfDuplexCall(self, request_iterator, context):
        echo_metadata(context)
        params = [p for r in request_iterator for p in r.response_parameters]
        for p in params:
            yield messages_pb2.StreamingOutputCallResponse(payload=payload(p.size))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    args = ap.parse_args()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        options=[("grpc.max_receive_message_length", 32 << 20), ("grpc.max_send_message_length", 32 << 20)],
    )
    test_pb2_grpc.add_TestServiceServicer_to_server(TestService(), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"listening on {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
