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
