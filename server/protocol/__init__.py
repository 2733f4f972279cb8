"""Message classes of the KServe v2 / Triton protocol, built from `proto/` by `make proto`.

The descriptors live in a private pool rather than in generated `_pb2` modules: tritonclient registers
messages of the same names in protobuf's default pool, and both must be importable in one process.
"""

from importlib.resources import files

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

DESCRIPTOR_SET = files(__name__) / "inference.binpb"
SERVICE_NAME = "inference.GRPCInferenceService"

_pool = descriptor_pool.DescriptorPool()
for _file in descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes()).file:
    _pool.Add(_file)


def message(name: str):
    """The message class `inference.<name>` (nested names with dots)."""
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"inference.{name}"))


def enum(name: str):
    """The enum descriptor `inference.<name>` (nested names with dots)."""
    return _pool.FindEnumTypeByName(f"inference.{name}")


ModelConfig = message("ModelConfig")
