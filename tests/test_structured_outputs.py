"""Structured outputs and tool calls through the OpenAI API, against a real server process serving a small
random Qwen2-architecture chat model with its own tokenizer and a Hermes-style chat template (tools in
<tools>, calls in <tool_call>; conftest's `served`), called with the `openai` package. A random model
writes nonsense: the tests judge that what it writes is valid and constrained, not that it is clever."""

import json
import re
import shutil
from pathlib import Path
from typing import Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from loadtest.schemas import varied_schemas

HERMES = (
    "{%- if tools %}<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    "{% else %}You are helpful.{% endif %}\n\n"
    "# Tools\n\nYou may call one or more functions. Their signatures, within <tools></tools>:\n<tools>"
    "{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n\n"
    "For each call, return a JSON object with the function's name and arguments within "
    "<tool_call></tool_call>:"
    "\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n"
    "{% elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'user' or (message.role == 'system' and not loop.first) or "
    "(message.role == 'assistant' and not message.tool_calls) %}"
    "<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{% elif message.role == 'assistant' %}<|im_start|>assistant\n"
    "{% if message.content %}{{ message.content }}"
    "{% endif %}{% for tool_call in message.tool_calls %}{% if tool_call.function is defined %}"
    "{% set tool_call = tool_call.function %}{% endif %}\n<tool_call>\n{\"name\": \"{{ tool_call.name }}\", "
    "\"arguments\": {{ tool_call.arguments | tojson }}}\n</tool_call>{% endfor %}<|im_end|>\n"
    "{% elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n"
    "</tool_response><|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# DeepSeek-R1's way, with Hermes' tools: past answers without their thinking (a user's text is cut alike,
# harmless here), a new answer opened inside <think>, closed at once where the reasoning effort is none
THINKING = (HERMES.replace("{{ message.content }}<|im_end|>",
                           "{{ message.content.split('</think>')[-1] }}<|im_end|>")
            .replace("{% if message.content %}{{ message.content }}",
                     "{% if message.content %}{{ message.content.split('</think>')[-1] }}")
            .replace("<|im_start|>assistant\n{% endif %}", "<|im_start|>assistant\n<think>\n"
                     "{% if reasoning_effort == 'none' %}</think>\n\n{% endif %}{% endif %}"))
ASK = [{"role": "user", "content": "Describe a file as JSON."}]
BIAS = 4  # on `</think>`: a random model closes its thinking after a few tokens


def with_template(repository: Path, name: str, copy: str, template: str) -> None:
    shutil.copytree(repository / name, repository / copy)
    config = repository / copy / "config.pbtxt"
    config.write_text(config.read_text().replace(f'name: "{name}"', f'name: "{copy}"'))
    (repository / copy / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer_config = repository / copy / "tokenizer_config.json"
    tokenizer_config.write_text(json.dumps({**json.loads(tokenizer_config.read_text()),
                                            "chat_template": template}))


def with_special_markers(repository: Path, name: str, copy: str) -> None:
    """A copy of the model whose tokenizer marks `<tool_call>` and `</tool_call>` special."""
    shutil.copytree(repository / name, repository / copy)
    config = repository / copy / "config.pbtxt"
    config.write_text(config.read_text().replace(f'name: "{name}"', f'name: "{copy}"'))
    tokenizer = json.loads((repository / copy / "tokenizer.json").read_text())
    for token in tokenizer["added_tokens"]:
        token["special"] = token["special"] or token["content"] in ("<tool_call>", "</tool_call>")
    (repository / copy / "tokenizer.json").write_text(json.dumps(tokenizer))


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=f"http://{served.http_url}/v1", api_key="unused", max_retries=0)


def test_json_schema_answers_parse_and_validate_over_varied_schemas(client):
    schemas = varied_schemas(200)
    for index, schema in enumerate(schemas):
        answer = client.chat.completions.create(
            model="tiny", messages=ASK, max_tokens=300, seed=index, temperature=1.0,
            response_format={"type": "json_schema", "json_schema": {"name": f"s{index}", "schema": schema}})
        choice = answer.choices[0]
        assert choice.finish_reason == "stop", (schema, choice.message.content)
        jsonschema.validate(json.loads(choice.message.content), schema)


class Verdict(BaseModel):
    verdict: Literal["yes", "no"]
    score: int = Field(ge=0, le=9)
    label: str = Field(max_length=6)


def test_the_openai_client_parses_the_answer_into_a_pydantic_model_streamed_or_not(client):
    parsed = client.chat.completions.parse(model="tiny", messages=ASK, response_format=Verdict,
                                           max_tokens=100)
    verdict = parsed.choices[0].message.parsed
    assert isinstance(verdict, Verdict) and 0 <= verdict.score <= 9
    with client.chat.completions.stream(model="tiny", messages=ASK, response_format=Verdict,
                                        max_tokens=100) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Verdict)


def test_json_object_regex_and_choice_as_vllm_takes_them(client):
    anything = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=200, seed=3,
                                              response_format={"type": "json_object"})
    if anything.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(anything.choices[0].message.content), dict)
    else:  # cut by max_tokens: says so, and is a prefix of an object
        assert anything.choices[0].finish_reason == "length"
        assert anything.choices[0].message.content.startswith("{")
    regex = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=20,
                                           extra_body={"structured_outputs": {"regex": "[0-9]{3}-[a-z]{2}"}})
    assert regex.choices[0].finish_reason == "stop"
    assert len(regex.choices[0].message.content) == 6 and regex.choices[0].message.content[3] == "-"
    choices = ["left", "right", "up", "naïve \"quoted\""]
    for seed in range(4):
        choice = client.completions.create(model="tiny", prompt="Pick:", max_tokens=20, seed=seed,
                                           extra_body={"guided_choice": choices})
        assert choice.choices[0].text in choices and choice.choices[0].finish_reason == "stop"


def test_a_cut_answer_says_length_and_bad_formats_are_refused_naming_the_problem(client, served):
    schema = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 50}}, "required": ["a"]}
    cut = client.chat.completions.create(
        model="tiny", messages=ASK, max_tokens=3,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    assert cut.choices[0].finish_reason == "length" and cut.choices[0].message.content.startswith('{"')
    url = f"http://{served.http_url}/v1/chat/completions"
    for response_format, fragment in (
        ({"type": "json_schema", "json_schema": {"name": "a", "schema": {"$ref": "#/nowhere"}}},
         "the JSON schema cannot be compiled"),
        ({"type": "json_schema", "json_schema": {"schema": schema}}, "needs 'json_schema': {\"name\""),
        ({"type": "yaml"}, "'response_format' must be"),
    ):
        refused = httpx.post(url, json={"model": "tiny", "messages": ASK, "response_format": response_format})
        assert refused.status_code == 400 and fragment in refused.json()["error"]["message"], refused.text
    both = httpx.post(url, json={"model": "tiny", "messages": ASK, "guided_regex": "a+",
                                 "response_format": {"type": "json_object"}})
    assert both.status_code == 400 and "both constrain the output" in both.json()["error"]["message"]


def test_constrained_and_free_rows_share_decode_steps_without_touching_each_other(client):
    """A greedy free answer is the same alone and beside constrained ones running in the same batch."""
    import concurrent.futures

    def free():
        return client.chat.completions.create(model="tiny", messages=ASK, max_tokens=24, temperature=0,
                                              extra_body={"ignore_eos": True}).choices[0].message.content

    def constrained(seed):
        return client.chat.completions.create(
            model="tiny", messages=ASK, max_tokens=24, seed=seed,
            extra_body={"structured_outputs": {"regex": "[a-c]{24}"}}).choices[0].message.content

    alone = free()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = [pool.submit(constrained, seed) for seed in range(6)] + [pool.submit(free)]
        answers = [future.result() for future in together]
    assert answers[-1] == alone
    assert all(len(a) == 24 and set(a) <= set("abc") for a in answers[:-1])


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                    "unit": {"enum": ["c", "f"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}},
                                       "required": ["zone"], "additionalProperties": False}}}
TOOLS = [WEATHER, TIME]
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}


def assert_valid_calls(calls, names=tuple(SCHEMAS)):
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_") and call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_a_required_tool_call_always_parses_streamed_or_not(client):
    for seed in range(5):
        answer = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS,
                                                tool_choice="required", parallel_tool_calls=False,
                                                max_tokens=200, seed=seed)
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
        assert_valid_calls(choice.message.tool_calls)
    named = client.chat.completions.create(
        model="tiny", messages=ASK, tools=TOOLS, max_tokens=200, parallel_tool_calls=False,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert_valid_calls(named.choices[0].message.tool_calls, ("get_time",))
    # a format for text answers leaves a forced call alone (there is no text to shape), as OpenAI's does
    formatted = client.chat.completions.create(
        model="tiny", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=200,
        parallel_tool_calls=False, response_format={"type": "json_schema",
                         "json_schema": {"name": "v", "schema": Verdict.model_json_schema()}})
    assert_valid_calls(formatted.choices[0].message.tool_calls)
    stream = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice="required",
                                            max_tokens=300, stream=True, seed=7)
    deltas, finish = [], None
    for chunk in stream:
        for choice in chunk.choices:
            deltas += choice.delta.tool_calls or []
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and [d.index for d in deltas] == list(range(len(deltas)))
    assert_valid_calls(deltas)


@pytest.mark.parametrize("model", ["tiny", "hermes_pro"])
def test_with_tools_auto_a_call_the_model_begins_is_held_to_its_schema(client, served, model):
    """`auto` as llama.cpp's lazy grammars: once the model writes `<tool_call>`, the call follows the tools'
    schemas. A random model is pushed to begin one by a bias on the `<tool_call>` token; left to itself
    after that it writes nonsense, so every valid call here is the grammar's doing. `hermes_pro`'s markers
    are special tokens, which the text keeps where tools are offered (vLLM's Hermes parser's rule)."""
    marker = marker_token(served)
    for seed in range(3):
        answer = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, max_tokens=300,
                                                parallel_tool_calls=False, seed=seed,
                                                logit_bias={str(marker): 100})
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
        assert_valid_calls(choice.message.tool_calls)


def test_special_tokens_stay_out_of_the_text_unless_asked_as_vllms_skip_special_tokens(client, served):
    start = marker_token(served, "<|im_start|>")  # special, and not an end token
    ask = dict(model="tiny", prompt="Hi", max_tokens=3, temperature=0, logit_bias={str(start): 100})
    assert client.completions.create(**ask).choices[0].text == ""
    kept = client.completions.create(**ask, extra_body={"skip_special_tokens": False}).choices[0].text
    assert kept == "<|im_start|>" * 3


HERMES_ANSWERS = {
    "Let me see.": True,
    'Let me see.\n<tool_call>\n{"name":"get_time","arguments":{"zone":"utc"}}\n</tool_call>': True,
    'Let me see.\n<tool_call>\n{"name":"get_time","arguments":{"zone":"UTC"}}': False,
    '<tool_call>\n{"name":"get_time","arguments":{"zone":"utc"}}\n</tool_call>\nDone.': False}
LLAMA_ANSWERS = {"It is noon.": True, '{"name":"get_time","parameters":{"zone":"utc"}}': True,
                 '{"name":"get_time","parameters":{}}': False, '{"answer": 1}': False}


@pytest.fixture(scope="module")
def qwen_like_tokenizer(tmp_path_factory) -> Path:
    """A tokenizer with Qwen 3's own tokens for the call and thinking markers."""
    from tests.test_llm_export import trained_tokenizer

    tokenizer_file = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    trained_tokenizer(added=("<tool_call>", "</tool_call>", "<think>", "</think>")).backend_tokenizer.save(
        str(tokenizer_file))
    return tokenizer_file


def accepted(tokenizer_file: Path, spec: tuple[str, str], answers: dict[str, bool], marker_tokens: bool,
             thinking: str | None = None) -> dict[str, bool]:
    """Whether the grammar accepts each answer whole. Without marker tokens (a tokenizer that has none),
    the model spells the markers out: here their letters are encoded apart, so that the tokenizer's marker
    tokens do not appear."""
    from tokenizers import Tokenizer

    from server.generation.structured import Grammars

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    end = tokenizer.token_to_id("<|im_end|>")

    def ids(text):
        if marker_tokens:
            return tokenizer.encode(text, add_special_tokens=False).ids
        markers = re.compile(r"(</?tool_call>|</?think>)")
        parts = [part for piece in markers.split(text)
                 for part in ([piece[:3], piece[3:]] if markers.fullmatch(piece) else [piece])]
        return [token for part in parts for token in tokenizer.encode(part, add_special_tokens=False).ids]

    grammars = Grammars(tokenizer_file, frozenset({end}))
    verdicts = {}
    for text in answers:
        constraint = grammars.constraint(spec, thinking=thinking)
        verdicts[text] = all(constraint.matcher.consume_token(token) for token in ids(text) + [end])
    return verdicts


@pytest.mark.parametrize("format_, marker_tokens, answers", [
    ("hermes", True, HERMES_ANSWERS), ("hermes", False, HERMES_ANSWERS), ("llama", False, LLAMA_ANSWERS)])
def test_the_auto_grammar_leaves_text_free_and_holds_calls_to_their_schemas(qwen_like_tokenizer, format_,
                                                                          marker_tokens, answers):
    from server.text.tools import grammar

    spec = ("grammar", grammar([tool["function"] for tool in TOOLS], format_, parallel=True, optional=True,
                               marker_tokens=marker_tokens))
    assert accepted(qwen_like_tokenizer, spec, answers, marker_tokens) == answers


def test_a_model_without_an_end_token_ends_its_grammars_with_the_tokenizers(qwen_like_tokenizer):
    """The test models' configs name no end token: a grammar then ends with the tokenizer's own (its
    config's `eos_token`, as vLLM takes it), not with the vocabulary's last token (here `</think>`, which
    a model wrote into its answer where the grammar could end), and `ignore_eos` forbids it."""
    import numpy as np
    from tokenizers import Tokenizer

    from server.generation.structured import Grammars
    from server.text.tools import grammar

    tokenizer = Tokenizer.from_file(str(qwen_like_tokenizer))
    end, last = tokenizer.token_to_id("<|im_end|>"), tokenizer.get_vocab_size() - 1
    spec = ("grammar", grammar([tool["function"] for tool in TOOLS], "hermes", parallel=False, optional=True,
                               marker_tokens=True))
    free = Grammars(qwen_like_tokenizer, frozenset(), "<|im_end|>").constraint(spec)
    allowed = np.unpackbits(np.frombuffer(free.matcher.compute_bitmask(), np.uint8), bitorder="little")
    assert tokenizer.id_to_token(last) == "</think>" and (allowed[end], allowed[last]) == (1, 0)
    held = Grammars(qwen_like_tokenizer, frozenset(), "<|im_end|>").constraint(spec, ignore_eos=True)
    assert held.forbidden == [end]
    unnamed = Grammars(qwen_like_tokenizer, frozenset()).constraint(spec, ignore_eos=True)
    assert unnamed.forbidden == [last]  # no end token anywhere: the last one, forbidden all the same


CALL = '<tool_call>\n{"name":"get_time","arguments":{"zone":"utc"}}\n</tool_call>'
OPENED_ANSWERS = {'Hm, JSON.\n</think>\n\n{"a":1}': True, '</think>{"a":1}': True, '{"a":1}': False,
                  'Hm.</think>\n\n{"a":x}': False, 'Hm.</think> a </think>{"a":1}': False,
                  'Hm.</think>\n\n{"a":1} more': False}
UNOPENED_ANSWERS = {'<think>\nHm, JSON.\n</think>\n\n{"a":1}': True, '{"a":1}': True,
                    '<think>Hm.</think>{"a":x}': False, 'Hm.</think>{"a":1}': False}
CALL_ANSWERS = {f"<think>\nThe time.\n</think>\n\n{CALL}": True, "<think>Hm.</think>\nIt is noon.": True,
                CALL: True, f"<think>Hm.</think>{CALL[:-1]}": False}


# Qwen 3's way: the thinking of the turn still in progress (after the last user message) is shown again
QWEN3_LIKE = ("{% set ns = namespace(last=0) %}{% for message in messages %}"
              "{% if message.role == 'user' %}{% set ns.last = loop.index0 %}{% endif %}{% endfor %}"
              "{% for message in messages %}<|im_start|>{{ message.role }}\n"
              "{% if message.role == 'assistant' and loop.index0 > ns.last and message.reasoning_content %}"
              "<think>\n{{ message.reasoning_content }}\n</think>\n\n{% endif %}"
              "{{ message.content }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_the_thinking_sent_back_with_an_answer_reaches_the_template():
    """An agent loop sends the assistant's message back as the server gave it (`reasoning_content`), or
    as Responses' reasoning item, or as Ollama's `thinking`: each reaches the template as
    `reasoning_content`, which Qwen 3's shows for the turn in progress."""
    from server.api.ollama.protocol import OllamaChat
    from server.api.openai.responses import input_messages
    from server.text.chat import ChatTemplate

    call = {"type": "function_call", "call_id": "call_1", "name": "get_time", "arguments": "{}"}
    items = [{"role": "user", "content": "Time?"},
             {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "Look."}]},
             call, {"type": "function_call_output", "call_id": "call_1", "output": "noon"}]
    messages = input_messages(items)
    assert messages[1] == {"role": "assistant", "content": "", "reasoning_content": "Look.",
                           "tool_calls": [{"id": "call_1", "type": "function",
                                           "function": {"name": "get_time", "arguments": "{}"}}]}
    prompt = ChatTemplate(QWEN3_LIKE, {}).render(messages)
    assert "<|im_start|>assistant\n<think>\nLook.\n</think>\n\n<|im_end|>" in prompt
    later = ChatTemplate(QWEN3_LIKE, {}).render([*messages, {"role": "user", "content": "And?"}])
    assert "Look." not in later  # a finished turn's thinking is left out
    ollama = OllamaChat.from_json({"model": "m", "messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "thinking": "Hm."}]})
    assert ollama.request.messages[1]["reasoning_content"] == "Hm."


@pytest.mark.parametrize("marker_tokens", [True, False])
def test_a_reasoning_models_thinking_comes_free_before_the_grammar_holds_its_answer(qwen_like_tokenizer,
                                                                                   marker_tokens):
    """vLLM's structured outputs with a reasoning parser: the thinking block is free text, the grammar holds
    what follows `</think>`; where the prompt opened the block (DeepSeek-R1's template) the model must
    close it, elsewhere (Qwen 3's) it may open one."""
    from server.text.reasoning import thinking_grammar
    from server.text.tools import grammar

    schema = ("json", json.dumps({"type": "object", "properties": {"a": {"type": "integer"}},
                                  "required": ["a"], "additionalProperties": False}))
    for spec, opened, answers in [(schema, True, OPENED_ANSWERS), (schema, False, UNOPENED_ANSWERS), (
            ("grammar", grammar([tool["function"] for tool in TOOLS], "hermes", parallel=False, optional=True,
                                marker_tokens=marker_tokens)), False, CALL_ANSWERS)]:
        thinking = thinking_grammar(opened, marker_tokens)
        verdicts = accepted(qwen_like_tokenizer, spec, answers, marker_tokens, thinking)
        assert verdicts == answers, (spec, opened)


def marker_token(served, text: str = "<tool_call>") -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(served.log.parent / "repository" / "tiny" / "tokenizer.json")
                               ).token_to_id(text)


def test_with_tools_offered_a_text_answer_still_streams_as_it_is_generated(client, served):
    """The model kept from opening a call (a bias against the marker's token): its text streams."""
    asked = dict(model="tiny", messages=ASK, tools=TOOLS, max_tokens=64, temperature=0,
                 logit_bias={str(marker_token(served)): -100}, extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**asked).choices[0]
    pieces, finish = [], None
    for chunk in client.chat.completions.create(**asked, stream=True):
        for choice in chunk.choices:
            pieces += [choice.delta.content] if choice.delta.content else []
            finish = choice.finish_reason or finish
    assert "<tool_call>" not in whole.message.content and whole.message.tool_calls is None
    # in pieces as they come (a client slower than the server gets them merged), not one piece at the end
    assert len(pieces) >= 2 and "".join(pieces) == whole.message.content and finish == "length"


def test_a_tool_call_round_trip_with_the_result_sent_back(client):
    first = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=200)
    call = first.choices[0].message.tool_calls[0]
    messages = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'}]
    second = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, max_tokens=8,
                                            extra_body={"ignore_eos": True})
    assert second.choices[0].finish_reason == "length"  # auto: the model may answer in text
    assert second.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result were read


@pytest.mark.parametrize("responses_api", [False, True], ids=["chat", "responses"])
def test_langchain_binds_tools_and_asks_for_structured_output(served, responses_api):
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model="tiny", base_url=f"http://{served.http_url}/v1", api_key="unused", max_tokens=200,
                      max_retries=0, use_responses_api=responses_api)
    called = chat.bind_tools(TOOLS, tool_choice="get_weather", parallel_tool_calls=False).invoke(
        "Weather in Paris?")
    assert called.tool_calls and called.tool_calls[0]["name"] == "get_weather"
    jsonschema.validate(called.tool_calls[0]["args"], SCHEMAS["get_weather"])
    streamed = None
    for piece in chat.bind_tools(TOOLS, tool_choice="required", parallel_tool_calls=False).stream("Time?"):
        streamed = piece if streamed is None else streamed + piece
    assert streamed.tool_calls and streamed.tool_calls[0]["name"] in SCHEMAS
    verdict = chat.with_structured_output(Verdict, method="json_schema").invoke("Yes or no?")
    assert isinstance(verdict, Verdict)


def test_a_template_without_tools_still_makes_the_calls_its_grammar_forces(client, served):
    """As vLLM: a model whose chat template takes no tools cannot see them, but a call that `required` or
    a named function forces is written as the grammar allows and read back as a call (so LangChain's
    `with_structured_output(method="function_calling")` works with it); `auto` is refused, saying why."""
    from langchain_openai import ChatOpenAI

    named = client.chat.completions.create(
        model="plain", messages=ASK, tools=TOOLS, max_tokens=200, parallel_tool_calls=False,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert named.choices[0].finish_reason == "tool_calls"
    assert_valid_calls(named.choices[0].message.tool_calls, ("get_weather",))
    deltas, finish = [], None
    for chunk in client.chat.completions.create(model="plain", messages=ASK, tools=TOOLS, max_tokens=200,
                                                tool_choice="required", stream=True, seed=3):
        for choice in chunk.choices:
            deltas += choice.delta.tool_calls or []
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and len(deltas) == 1
    assert_valid_calls(deltas)
    with pytest.raises(openai.BadRequestError, match="cannot choose to call them"):
        client.chat.completions.create(model="plain", messages=ASK, tools=TOOLS, max_tokens=20)
    chat = ChatOpenAI(model="plain", base_url=f"http://{served.http_url}/v1", api_key="unused",
                      max_tokens=200, max_retries=0, temperature=0)
    # strict: no properties beyond the model's, so a random model's call ends within max_tokens
    structured = chat.with_structured_output(Verdict, method="function_calling", strict=True)
    assert isinstance(structured.invoke("Yes?"), Verdict)


@pytest.mark.parametrize("body, fragment", [
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0] must be"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "'tool_choice' must name one of the tools (get_weather, get_time)"),
    ({"tool_choice": "required"}, "'tool_choice' needs 'tools'"),
    ({"tools": TOOLS, "tool_choice": "required", "guided_regex": "a"}, "both constrain the output"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}]},
     "arguments of 'f' are not JSON"),
    ({"messages": [{"role": "user", "content": "x", "reasoning_content": "y"}]},
     "only assistant messages carry their thinking"),
])
def test_bad_tool_requests_are_refused_naming_the_problem(served, body, fragment):
    answer = httpx.post(f"http://{served.http_url}/v1/chat/completions",
                        json={"model": "tiny", "messages": ASK, **body})
    assert answer.status_code == 400 and fragment in answer.json()["error"]["message"], answer.text


def test_tool_calls_read_in_the_hermes_and_llama_formats_and_templates_without_tools_refuse_them():
    from server.core.errors import InvalidArgument
    from server.text.chat import ChatTemplate
    from server.text.tools import parse, streamable, template_format
    from tests.test_llm_export import CHATML

    content, calls = parse('Let me look.\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>',
                           "hermes", {"f"})
    assert content == "Let me look."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("f", {"x": 1})]
    assert parse('<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>', "hermes", {"f"}) == (
        '<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>', [])  # an unknown tool stays text
    assert parse("<tool_call>\n{\"name\": \"f\"", "hermes", {"f"})[1] == []  # cut short: text
    content, calls = parse('<|python_tag|>{"name": "f", "parameters": {"y": "z"}}', "llama", {"f"})
    assert content is None and json.loads(calls[0].arguments) == {"y": "z"}
    assert template_format(HERMES) == "hermes" and template_format(CHATML) is None
    # what may stream as content before the answer ends: never a call, nor the half of its marker
    hermes = ("Hi there", "Hi <tool", "Hi <tool_call>{", "<")
    assert [streamable(text, "hermes") for text in hermes] == [8, 3, 3, 0]
    assert [streamable(text, "llama") for text in ("Sure.", "  {", "<|python", "")] == [5, 0, 0, 0]
    assert streamable("Hi there <tool_call>{", "hermes", sent=8) == 9  # looks only past what was sent
    assert streamable("Sure. {", "llama", sent=5) == 7  # content already sent: the rest is content too
    with pytest.raises(InvalidArgument, match="takes no tools"):
        ChatTemplate(CHATML, {}).render(ASK, tools=TOOLS)


def test_a_reasoning_models_thinking_comes_apart_as_reasoning_content_whole_and_streamed(client, served):
    """vLLM's reasoning parsers' split: a model whose template cuts `</think>` from past answers is a
    reasoning model; here the template opens the answer inside `<think>`. A bias on the `</think>` token
    makes the random model end its thinking soon; a schema, or a required call, then holds only the answer
    (vLLM's structured outputs leave the thinking free)."""
    bias = {str(marker_token(served, "</think>")): BIAS}
    thoughts = []
    for seed in range(3):
        shape = {"response_format": Verdict, "logit_bias": bias, "seed": seed}
        whole = client.chat.completions.parse(model="thinker", messages=ASK, max_tokens=120,
                                              **shape).choices[0]
        thought, answer = whole.message.model_extra["reasoning_content"], whole.message.parsed
        assert whole.finish_reason == "stop" and isinstance(answer, Verdict) and "</think>" not in thought
        reasoning, content = [], []
        with client.chat.completions.stream(model="thinker", messages=ASK, max_tokens=120, **shape) as stream:
            for choice in (c for event in stream if event.type == "chunk" for c in event.chunk.choices):
                reasoning += [choice.delta.model_extra.get("reasoning_content") or ""]
                content += [choice.delta.content or ""]
        assert "".join(reasoning).strip() == thought
        assert Verdict.model_validate_json("".join(content)) == answer
        called = client.chat.completions.create(model="thinker", messages=ASK, tools=TOOLS, max_tokens=200,
                                                tool_choice="required", parallel_tool_calls=False,
                                                logit_bias=bias, seed=seed).choices[0]
        assert called.finish_reason == "tool_calls" and "reasoning_content" in called.message.model_extra
        assert_valid_calls(called.message.tool_calls)
        results = [{"role": "tool", "tool_call_id": call.id, "content": "21"}
                   for call in called.message.tool_calls]
        sent_back = [*ASK, called.message.model_dump(exclude_none=True), *results]  # an agent loop's way
        assert "reasoning_content" in sent_back[1]
        client.chat.completions.create(model="thinker", messages=sent_back, max_tokens=2)
        thoughts.append(thought)
    assert any(thoughts), thoughts  # the model thought before answering
    plain = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=4).choices[0].message
    assert "reasoning_content" not in (plain.model_extra or {})  # a template without <think>: no split
