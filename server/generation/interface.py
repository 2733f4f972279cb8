"""What a generation model looks like to clients: text (or token ids) in, text out, decoupled."""

GENERATION_INTERFACE = """\
model_transaction_policy { decoupled: true }
input [
  { name: "text_input", data_type: TYPE_STRING, dims: [ 1 ], optional: true },
  { name: "input_ids", data_type: TYPE_INT64, dims: [ -1 ], optional: true },
  { name: "sampling_parameters", data_type: TYPE_STRING, dims: [ 1 ], optional: true }
]
output [
  { name: "text_output", data_type: TYPE_STRING, dims: [ -1 ] },
  { name: "output_ids", data_type: TYPE_INT64, dims: [ -1 ] }
]
"""


def generation_parameters(max_sequence_length: int, eos_token_ids: list[int], tokenizer_file: str | None,
                          prefix_cache_tokens: int = 4096, max_running: int = 16) -> dict[str, str]:
    """The config `parameters` a generation model is served with (exported here or imported)."""
    values = {
        "eos_token_id": ",".join(map(str, eos_token_ids)) or "-1",
        "max_sequence_length": max_sequence_length,
        "default_max_tokens": 64,
        "max_running_sequences": max_running,
        "max_waiting_sequences": 64,
        "max_prefill_tokens": 2048,
        # prompts' keys and values kept for reuse by prompts that share them
        "prefix_cache_tokens": prefix_cache_tokens,
        # decode steps are many short runs back to back: sleeping ONNX Runtime threads would wake per op
        "allow_spinning": 1,
    }
    if tokenizer_file:
        values["tokenizer_file"] = tokenizer_file
    return {key: str(value) for key, value in values.items()}
