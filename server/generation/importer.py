"""`ortserve import-llm DIR|FILE.gguf --repository R --name N`: a decoder made elsewhere, served as it is.

A GGUF file (llama.cpp's) becomes a graph of ONNX Runtime's operators with the file's quantized blocks
kept (`gguf_graph`), its tokenizer and chat template written beside it. Two directory layouts are
recognized from the files: onnxruntime-genai's model builder (`genai_config.json` naming
the graph, GroupQueryAttention inside) and Optimum / transformers.js (`model.onnx` or
`decoder_model_merged.onnx`, at the top or under `onnx/`, beside `config.json`). The graph and its
external data go into version 1, the tokenizer, its settings and chat template beside it, and a
config.pbtxt with the generation interface; the context length and stop ids come from the files the
model ships. No torch is needed."""

import json
import shutil
from pathlib import Path

import onnx
import onnxruntime as ort
from google.protobuf import text_format

from server.generation.decoder import make_decoder
from server.generation.graph import DecoderGraphError
from server.generation.interface import GENERATION_INTERFACE, generation_parameters
from server.protocol import ModelConfig

OPTIMUM_FILES = ("model.onnx", "onnx/model.onnx", "decoder_model_merged.onnx",
                 "onnx/decoder_model_merged.onnx")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json")


class LayoutError(ValueError):
    """The directory cannot be served as it is; the message says what is missing or not understood."""


def import_llm(source: Path, repository: Path, name: str, float_activations: bool = False,
               int8_cache: bool = False, prompt_lookup: int = 0) -> Path:
    """`prompt_lookup`: the tokens a sequence running alone drafts per run (`prompt_lookup_num_tokens`);
    0: off."""
    if prompt_lookup < 0:
        raise LayoutError(f"prompt lookup drafts 0 or more tokens per run, not {prompt_lookup}")
    source = Path(source)
    if source.suffix == ".gguf":
        return import_gguf(source, repository, name, float_activations, int8_cache, prompt_lookup)
    if int8_cache:
        raise LayoutError("an int8 cache is for GGUF files (its scales are calibrated as the graph is "
                          f"built); '{source}' is an exported decoder, whose cache keeps the graph's type")
    genai = (source / "genai_config.json").exists()
    graph, context, eos, head_dim = _genai(source) if genai else (*_optimum(source), None)
    if not (source / "tokenizer.json").exists():
        raise LayoutError(f"'{source}' has no tokenizer.json; the server needs the model's tokenizer")
    _check_graph(graph, head_dim)
    target = Path(repository) / name
    version = target / "1"
    version.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(graph, version / "model.onnx")
    for data in _external_data(graph):
        shutil.copyfile(graph.parent / data, version / data)
    for file in TOKENIZER_FILES:
        if (source / file).exists():
            shutil.copyfile(source / file, target / file)
    parameters = generation_parameters(context, eos, "tokenizer.json")
    if head_dim:
        parameters["kv_head_dim"] = str(head_dim)
    _write_config(target, name, parameters, prompt_lookup)
    return target


def import_gguf(source: Path, repository: Path, name: str, float_activations: bool = False,
                int8_cache: bool = False, prompt_lookup: int = 0) -> Path:
    """The GGUF file's decoder, tokenizer and chat template as a generation model. `int8_cache`: keys and
    values cached in int8 with per-channel scales calibrated on real text (`kv_calibration`)."""
    from server.generation.gguf_file import GgufError, read
    from server.generation.gguf_graph import FLOAT_COMPUTE, INT8_COMPUTE, build
    from server.text.gguf_tokenizer import TokenizerError, write_tokenizer

    target = Path(repository) / name
    level = FLOAT_COMPUTE if float_activations else INT8_COMPUTE
    try:
        model = read(source)
        settings = model.settings()
        graph = build(model, level)
        (target / "1").mkdir(parents=True, exist_ok=True)
        write_tokenizer(model.metadata, target)
        if int8_cache:
            from server.generation.kv_calibration import calibration_ids, kv_cache_scales

            chunks = calibration_ids(target / "tokenizer.json", settings.context)
            graph = build(model, level, kv_cache_scales(graph, chunks))
    except (GgufError, TokenizerError) as error:
        raise LayoutError(str(error)) from None
    onnx.save_model(graph, str(target / "1" / "model.onnx"), save_as_external_data=True,
                    location="model.onnx.data", size_threshold=1024)
    _write_config(target, name, generation_parameters(settings.context, _stop_ids(model.metadata),
                                                      "tokenizer.json"), prompt_lookup)
    return target


END_OF_TURN = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>")


def _stop_ids(metadata: dict) -> list[int]:
    """The file's end-of-sequence / end-of-turn ids and, as llama.cpp does, the well-known end-of-turn
    tokens its vocabulary has."""
    ids = [metadata.get(f"tokenizer.ggml.{key}") for key in ("eos_token_id", "eot_token_id", "eom_token_id")]
    tokens = metadata["tokenizer.ggml.tokens"]
    ids += [index for index, token in enumerate(tokens) if token in END_OF_TURN]
    return sorted({int(i) for i in ids if i is not None})


def _write_config(target: Path, name: str, parameters: dict[str, str], prompt_lookup: int) -> None:
    config = text_format.Parse('platform: "onnxruntime_onnx"\nmax_batch_size: 0\n' + GENERATION_INTERFACE,
                               ModelConfig(name=name))
    if prompt_lookup:
        parameters = {**parameters, "prompt_lookup_num_tokens": str(prompt_lookup)}
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    (target / "config.pbtxt").write_text(text_format.MessageToString(config))


def _genai(source: Path) -> tuple[Path, int, list[int], int | None]:
    """The graph, context length, stop ids and key/value head size genai_config.json names."""
    settings = json.loads((source / "genai_config.json").read_text())["model"]
    decoder = settings["decoder"]
    return (source / decoder["filename"], int(settings["context_length"]), _ids(settings.get("eos_token_id")),
            decoder.get("head_size"))


def _optimum(source: Path) -> tuple[Path, int, list[int]]:
    graph = next((source / f for f in OPTIMUM_FILES if (source / f).exists()), None)
    if graph is None:
        raise LayoutError(f"'{source}' holds neither genai_config.json (onnxruntime-genai) nor one of "
                           f"{', '.join(OPTIMUM_FILES)} (Optimum, transformers.js)")
    if not (source / "config.json").exists():
        raise LayoutError(f"'{source}' has no config.json, which says the model's context length")
    config = json.loads((source / "config.json").read_text())
    context = config.get("max_position_embeddings") or config.get("n_positions")
    generation = source / "generation_config.json"
    eos = json.loads(generation.read_text()).get("eos_token_id") if generation.exists() else None
    return graph, int(context), _ids(eos if eos is not None else config.get("eos_token_id"))


def _ids(value) -> list[int]:
    return [] if value is None else [int(v) for v in (value if isinstance(value, list) else [value])]


def _check_graph(graph: Path, head_dim: int | None) -> None:
    """The server's decoder for the graph, or an error naming the inputs or outputs it does not
    understand."""
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    try:
        decoder = make_decoder(session, head_dim=head_dim)
    except DecoderGraphError as error:
        raise LayoutError(f"'{graph.name}' cannot be served: {error}") from None
    outputs = {o.name for o in session.get_outputs()}
    missing = sorted({"logits", *decoder.present_names} - outputs)
    if missing:
        raise LayoutError(f"'{graph.name}' cannot be served: it has no output {', '.join(missing)}; its "
                           f"outputs are {', '.join(sorted(outputs))}")


def _external_data(graph: Path) -> list[str]:
    model = onnx.load(str(graph), load_external_data=False)
    locations = {entry.value for tensor in model.graph.initializer for entry in tensor.external_data
                 if entry.key == "location"}
    return sorted(locations)
