"""An MLServer runtime running one ONNX Runtime model (imported by MLServer in its own environment).

model-settings.json: "implementation": "mlserver_runtime.OnnxModel", "parameters": {"extra":
{"path": MODEL.onnx, "intra_op_threads": N}}.
"""

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        extra = self.settings.parameters.extra
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(extra["intra_op_threads"])
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(extra["path"], options, providers=["CPUExecutionProvider"])
        self.names = [output.name for output in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {item.name: NumpyCodec.decode_input(item) for item in payload.inputs}
        results = self.session.run(self.names, feeds)
        outputs = [NumpyCodec.encode_output(name, array) for name, array in zip(self.names, results)]
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=outputs)
