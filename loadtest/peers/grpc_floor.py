"""The least a grpc.aio server can cost per call: ModelInfer answered with the same bytes, nothing parsed
or run (on uvloop, as ortserve serves). bench_peers measures it beside the servers to show how much of a
server's CPU per request is grpcio's own.

python grpc_floor.py PORT
"""

import sys

import grpc
import uvloop

ANSWER = b"\n\x06simple\x12\x011"  # a ModelInferResponse naming the model and version


async def model_infer(request: bytes, context) -> bytes:
    return ANSWER


async def main(port: str) -> None:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(model_infer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1]))
