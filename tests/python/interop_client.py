"""The gRPC interop client cases weft must carry, run with grpcio (Python):
the second, independent HTTP/2 and gRPC implementation. Prints one
`PASS case` / `FAIL case: why` line per case; exits 1 if any failed."""

import argparse
import os
import queue
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stubs  # noqa: E402

stubs.load()
import grpc  # noqa: E402
from grpc.testing import empty_pb2, messages_pb2, test_pb2_grpc  # noqa: E402

CASES = [
    "empty_unary",
    "large_unary",
    "client_streaming",
    "server_streaming",
    "ping_pong",
    "status_code_and_message",
    "custom_metadata",
    "cancel_after_begin",
    "timeout_on_sleeping_server",
]


def payload(n):
    return messages_pb2.Payload(body=b"\0" * n)


def check(cond, why):
    if not cond:
        raise AssertionError(why)


def empty_unary(stub):
    check(stub.EmptyCall(empty_pb2.Empty(), timeout=10) == empty_pb2.Empty(), "not Empty")


def large_unary(stub):
    r = stub.UnaryCall(messages_pb2.SimpleRequest(response_size=314159, payload=payload(271828)), timeout=10)
    check(len(r.payload.body) == 314159, f"payload {len(r.payload.body)}")


def client_streaming(stub):
    reqs = (messages_pb2.StreamingInputCallRequest(payload=payload(n)) for n in (27182, 8, 1828, 45904))
    r = stub.StreamingInputCall(reqs, timeout=10)
    check(r.aggregated_payload_size == 74922, f"aggregated {r.aggregated_payload_size}")


def server_streaming(stub):
    sizes = (31415, 9, 2653, 58979)
    req = messages_pb2.StreamingOutputCallRequest(
        response_parameters=[messages_pb2.ResponseParameters(size=s) for s in sizes]
    )
    got = [len(r.payload.body) for r in stub.StreamingOutputCall(req, timeout=10)]
    check(got == list(sizes), f"sizes {got}")


class Pinger:
    """Feeds a full-duplex call one request at a time."""

    def __init__(self):
        self.q = queue.Queue()

    def send(self, req):
        self.q.put(req)

    def close(self):
        self.q.put(None)

    def __iter__(self):
        return self

    def __next__(self):
        item = self.q.get()
        if item is None:
            raise StopIteration
        return item


def ping_pong(stub):
    pinger = Pinger()
    call = stub.FullDuplexCall(pinger, timeout=10)
    for resp_size, req_size in ((31415, 27182), (9, 8), (2653, 1828), (58979, 45904)):
        pinger.send(
            messages_pb2.StreamingOutputCallRequest(
                response_parameters=[messages_pb2.ResponseParameters(size=resp_size)], payload=payload(req_size)
            )
        )
        pong = next(call)
        check(len(pong.payload.body) == resp_size, f"pong {len(pong.payload.body)} != {resp_size}")
    pinger.close()
    check(next(call, None) is None, "stream did not end")


def status_code_and_message(stub):
    msg = "test status message"
    status = messages_pb2.EchoStatus(code=2, message=msg)
    try:
        stub.UnaryCall(messages_pb2.SimpleRequest(response_status=status), timeout=10)
        raise AssertionError("unary call succeeded")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.UNKNOWN and e.details() == msg, f"unary got {e.code()} {e.details()!r}")
    try:
        list(stub.FullDuplexCall(iter([messages_pb2.StreamingOutputCallRequest(response_status=status)]), timeout=10))
        raise AssertionError("duplex call succeeded")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.UNKNOWN and e.details() == msg, f"duplex got {e.code()} {e.details()!r}")


def custom_metadata(stub):
    initial = ("x-grpc-test-echo-initial", "test_initial_metadata_value")
    trailing = ("x-grpc-test-echo-trailing-bin", b"\xab\xab\xab")
    md = (initial, trailing)
    _, call = stub.UnaryCall.with_call(
        messages_pb2.SimpleRequest(response_size=314159, payload=payload(271828)), metadata=md, timeout=10
    )
    check(initial in call.initial_metadata(), f"unary initial {call.initial_metadata()}")
    check(trailing in call.trailing_metadata(), f"unary trailing {call.trailing_metadata()}")
    call = stub.FullDuplexCall(
        iter([messages_pb2.StreamingOutputCallRequest(response_parameters=[messages_pb2.ResponseParameters(size=314159)])]),
        metadata=md,
        timeout=10,
    )
    for _ in call:
        pass
    check(initial in call.initial_metadata(), f"duplex initial {call.initial_metadata()}")
    check(trailing in call.trailing_metadata(), f"duplex trailing {call.trailing_metadata()}")


def cancel_after_begin(stub):
    never = threading.Event()

    def requests():
        never.wait(10)
        return
        yield  # pragma: no cover

    future = stub.StreamingInputCall.future(requests(), timeout=10)
    future.cancel()
    never.set()
    check(future.cancelled(), "not cancelled")
    try:
        future.result()
        raise AssertionError("got a result")
    except grpc.FutureCancelledError:
        pass


def timeout_on_sleeping_server(stub):
    pinger = Pinger()
    call = stub.FullDuplexCall(pinger, timeout=0.001)
    pinger.send(messages_pb2.StreamingOutputCallRequest(payload=payload(27182)))
    try:
        next(call)
        raise AssertionError("got a response")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, f"got {e.code()}")
    finally:
        pinger.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--target", required=True, help="host:port to connect to (e.g. weft's outbound port)")
    ap.add_argument("--authority", help=":authority to send (the service name weft routes by)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated cases (default: all)")
    args = ap.parse_args()
    options = [("grpc.max_receive_message_length", 32 << 20)]
    if args.authority:
        options.append(("grpc.default_authority", args.authority))
    failed = 0
    with grpc.insecure_channel(args.target, options=options) as channel:
        stub = test_pb2_grpc.TestServiceStub(channel)
        for case in args.cases.split(","):
            try:
                globals()[case](stub)
                print(f"PASS {case}", flush=True)
            except Exception as e:  # noqa: BLE001 - report every case
                failed += 1
                print(f"FAIL {case}: {e!r}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
