"""ModelInfer's tensor bytes read and written in place. A request's top-level `raw_input_contents` (field 7)
are taken as views of the received message (the rest is parsed by protobuf), and a response's
`raw_output_contents` (field 6) are written after the rest of it, each output array copied once into the
answer. Through protobuf objects each tensor would be copied in, read out as new bytes, and copied again
to serialize."""

from server.core.errors import InvalidArgument

IN_PLACE_FROM = 64 << 10  # smaller messages go through protobuf whole: a copy costs less than scanning them
RAW_INPUT_CONTENTS = 7  # ModelInferRequest.raw_input_contents
RAW_OUTPUT_CONTENTS = 6  # ModelInferResponse.raw_output_contents
_LENGTH_DELIMITED = 2


def split_raw_inputs(data: bytes) -> tuple[bytes, list[memoryview]]:
    """The message without its raw_input_contents, and views of them in order."""
    view, position, kept, raw, kept_from = memoryview(data), 0, [], [], 0
    while position < len(data):
        tag, after_tag = _varint(data, position)
        field, wire = tag >> 3, tag & 7
        start, end = _span(data, after_tag, wire)
        if field == RAW_INPUT_CONTENTS and wire == _LENGTH_DELIMITED:
            kept.append(view[kept_from:position])
            raw.append(view[start:end])
            kept_from = end
        position = end
    if not raw:
        return data, raw
    kept.append(view[kept_from:])
    return b"".join(kept), raw


def with_raw_outputs(message: bytes, outputs: list) -> bytes:
    """A serialized ModelInferResponse followed by its raw_output_contents (bytes-like, in order)."""
    parts = [message]
    tag = _encode_varint(RAW_OUTPUT_CONTENTS << 3 | _LENGTH_DELIMITED)
    for output in outputs:
        parts += [tag, _encode_varint(memoryview(output).nbytes), output]
    return b"".join(parts)


def _span(data: bytes, position: int, wire: int) -> tuple[int, int]:
    """Where a field's value starts and ends (its payload, for a length-delimited one)."""
    if wire == 0:
        _, end = _varint(data, position)
        start = position
    elif wire == _LENGTH_DELIMITED:
        length, start = _varint(data, position)
        end = start + length
    elif wire in (1, 5):
        start, end = position, position + (8 if wire == 1 else 4)
    else:
        raise InvalidArgument(f"malformed ModelInferRequest protobuf: wire type {wire} at byte {position}")
    if end > len(data):
        raise InvalidArgument(f"malformed ModelInferRequest protobuf: a field at byte {position} runs past "
                              f"the message's {len(data)} bytes")
    return start, end


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while position < len(data) and shift < 64:
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position += 1
        if byte < 0x80:
            return value, position
        shift += 7
    raise InvalidArgument("malformed ModelInferRequest protobuf: a varint runs past the message")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
