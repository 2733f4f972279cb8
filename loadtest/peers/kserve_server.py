"""KServe's Python model server with one ONNX Runtime model (run in the KServe environment).

python kserve_server.py NAME MODEL.onnx INTRA_OP_THREADS --http_port P --grpc_port G [kserve flags]
"""

import logging
import sys

import numpy as np
import onnxruntime as ort

NAME, PATH, THREADS = sys.argv[1:4]
del sys.argv[1:4]  # the rest are KServe's own flags, parsed when kserve is imported

import kserve  # noqa: E402
from kserve import InferOutput, InferRequest, InferResponse  # noqa: E402

DATATYPES = {np.dtype(np.int32): "INT32", np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}


class OnnxModel(kserve.Model):
    def __init__(self):
        super().__init__(NAME)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(THREADS)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(PATH, options, providers=["CPUExecutionProvider"])
        self.ready = True

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        feeds = {item.name: item.as_numpy() for item in payload.inputs}
        names = [output.name for output in self.session.get_outputs()]
        binary = payload.use_binary_outputs or any(
            output.binary_data for output in payload.request_outputs or ()
        )
        outputs = []
        for name, array in zip(names, self.session.run(names, feeds)):
            output = InferOutput(name, list(array.shape), DATATYPES[array.dtype])
            output.set_data_from_numpy(array, binary_data=binary)
            outputs.append(output)
        return InferResponse(payload.id or "", NAME, outputs, use_binary_outputs=binary)


if __name__ == "__main__":
    server = kserve.ModelServer()  # configures logging: the access log is turned off after it
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    server.start([OnnxModel()])
