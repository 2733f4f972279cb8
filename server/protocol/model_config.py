"""ModelConfig as the server reads it: the error of a config that cannot be served, its enums' names,
its free `parameters`, its data files, and its JSON form as Triton's HTTP API returns it."""

from pathlib import Path

import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from server.protocol import ModelConfig, enum

_DATA_TYPE = enum("DataType")


class ConfigError(Exception):
    """The configuration cannot describe a servable model; the message says why."""


def read_data_file(path: Path, dtype, shape, what: str) -> np.ndarray:
    """A raw little-endian tensor file under the model directory (warmup data, initial states)."""
    try:
        return np.fromfile(path, dtype=dtype).reshape(shape)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{what} '{path.name}': {error}") from None


def data_type_name(number: int) -> str:
    return _DATA_TYPE.values_by_number[number].name


def parameter(config: ModelConfig, key: str, default: str | None = None) -> str | None:
    return config.parameters[key].string_value if key in config.parameters else default


def to_json(config: ModelConfig) -> dict:
    """ModelConfig as Triton's HTTP API returns it: proto field names, integers as numbers."""
    return _numbers(config, json_format.MessageToDict(config, preserving_proto_field_name=True))


_INT64_TYPES = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64}


def _numbers(message, as_dict: dict) -> dict:
    for field, value in message.ListFields():
        if field.name not in as_dict:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is not None:
                for key, item in value.items():
                    _numbers(item, as_dict[field.name][str(key)])
        elif field.message_type is not None:
            items = value if field.is_repeated else [value]
            targets = as_dict[field.name] if field.is_repeated else [as_dict[field.name]]
            for item, target in zip(items, targets):
                _numbers(item, target)
        elif field.type in _INT64_TYPES:
            as_dict[field.name] = [int(v) for v in value] if field.is_repeated else int(value)
    return as_dict
