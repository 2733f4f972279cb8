"""The least a Python server on ortserve's own stack can cost per byte moved: uvicorn (httptools, uvloop)
answering an HTTP request with its own body, and grpc.aio answering ModelInfer with the message it
received, both on one uvloop loop, nothing parsed, copied or run (bench_bytes starts it with glibc's
allocator set as ortserve sets it). bench_bytes measures it beside ortserve on the same requests: what
the kernel's loopback TCP, the event loop and the protocol libraries cost per MB.

python echo_floor.py HTTP_PORT GRPC_PORT
"""

import sys

import grpc
import uvicorn
import uvloop

UNBOUNDED = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


async def http_echo(scope, receive, send) -> None:
    """The body streamed back as it arrives (its length is the request's): nothing joined or kept."""
    length = dict(scope["headers"]).get(b"content-length", b"0")
    headers = [(b"content-type", b"application/octet-stream"), (b"content-length", length)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
        await send({"type": "http.response.body", "body": message.get("body", b""), "more_body": more})


async def grpc_echo(request: bytes, context) -> bytes:
    return request


async def main(http_port: int, grpc_port: int) -> None:
    server = grpc.aio.server(options=UNBOUNDED)
    handler = grpc.unary_unary_rpc_method_handler(grpc_echo)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": handler}),))
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()
    config = uvicorn.Config(http_echo, host="127.0.0.1", port=http_port, loop="none", http="httptools",
                            lifespan="off", access_log=False, log_level="warning")
    await uvicorn.Server(config).serve()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
