"""Ollama's API through Ollama's own Python client and LangChain's ChatOllama, against a real server process
(conftest's `served`: a small random Qwen2 chat model with a Hermes-style template, and `plain`, the same
model with a template that takes no tools). Answers are compared with the OpenAI routes' on the same
model: the front end must mean the same requests."""

import json

import jsonschema
import ollama
import openai
import pytest

ASK = [{"role": "user", "content": "Describe a file as JSON."}]
# num_ctx, num_thread: llama.cpp's runtime, no effect here; an option sent as null is as absent
GREEDY = {"temperature": 0, "num_predict": 12, "num_ctx": 4096, "num_thread": 2, "mirostat": None}
SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 8},
                         "size": {"type": "integer", "minimum": 0, "maximum": 999}},
          "required": ["name", "size"], "additionalProperties": False}


@pytest.fixture
def clients(served):
    url = f"http://{served.http_url}"
    return ollama.Client(host=url), openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def openai_chat(client, messages, **extra):
    answer = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0,
                                            extra_body={"ignore_eos": True, **extra})
    return answer.choices[0].message.content, answer.usage


def test_chat_whole_and_streamed_means_the_openai_chat(clients):
    client, openai_client = clients
    whole = client.chat(model="tiny:latest", messages=ASK, options=GREEDY)
    expected, usage = openai_chat(openai_client, ASK)
    assert whole.message.role == "assistant" and whole.done and whole.done_reason in ("stop", "length")
    assert whole.message.content == expected[:len(whole.message.content)]
    assert whole.prompt_eval_count == usage.prompt_tokens and whole.eval_count <= 12
    sent_raw = client._client.post("/api/chat", json={"model": "tiny", "messages": ASK, "options": GREEDY,
                                                     "stream": False}).json()
    assert sent_raw["message"]["content"] == whole.message.content  # "mirostat": null as absent
    pieces = list(client.chat(model="tiny", messages=ASK, options=GREEDY, stream=True))
    # pieces that wait for a slower client come merged: how many lines there are depends on timing
    assert len(pieces) >= 2 and pieces[-1].done and not any(piece.done for piece in pieces[:-1])
    assert "".join(piece.message.content for piece in pieces) == whole.message.content
    assert pieces[-1].eval_count == whole.eval_count and pieces[-1].total_duration > 0


def test_generate_wraps_the_prompt_in_the_template_unless_raw(clients, served):
    client, openai_client = clients
    options = {**GREEDY, "stop": ["\n\n"]}
    templated = client.generate(model="tiny", prompt=ASK[0]["content"], options=options)
    assert templated.response == openai_chat(openai_client, ASK, stop=["\n\n"])[0]
    raw = client.generate(model="tiny", prompt="def main():", raw=True, options=GREEDY)
    completion = openai_client.completions.create(model="tiny", prompt="def main():", max_tokens=12,
                                                  temperature=0)
    assert raw.response == completion.choices[0].text
    streamed = list(client.generate(model="tiny", prompt="def main():", raw=True, options=GREEDY,
                                    stream=True))
    assert "".join(part.response for part in streamed) == raw.response and streamed[-1].done
    loaded = client.generate(model="tiny")  # an empty prompt: Ollama's way to load the model
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""


def test_format_holds_the_answer_to_a_schema_or_json(clients):
    client, openai_client = clients
    for seed in range(3):
        answer = client.chat(model="tiny", messages=ASK, format=SCHEMA,
                             options={"seed": seed, "num_predict": 200})
        jsonschema.validate(json.loads(answer.message.content), SCHEMA)
    as_json = client.chat(model="tiny", messages=ASK, format="json", options={"seed": 5, "num_predict": 40})
    expected = openai_client.chat.completions.create(model="tiny", messages=ASK, max_tokens=40, seed=5,
                                                     response_format={"type": "json_object"})
    assert as_json.message.content == expected.choices[0].message.content
    assert as_json.message.content.startswith("{")


def test_a_conversation_with_tool_calls_and_results_is_read_as_the_openai_one(clients):
    client, openai_client = clients
    tool = {"type": "function", "function": {"name": "get_time", "description": "The time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}
    history = [*ASK, {"role": "assistant", "content": "",
                      "tool_calls": [{"function": {"name": "get_time", "arguments": {"zone": "utc"}}}]},
               {"role": "tool", "content": "12:00"}]
    answer = client.chat(model="tiny", messages=history, tools=[tool], options=GREEDY)
    openai_history = [*ASK, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1_0", "type": "function",
         "function": {"name": "get_time", "arguments": json.dumps({"zone": "utc"})}}]},
        {"role": "tool", "tool_call_id": "call_1_0", "content": "12:00"}]
    sent = ollama.Tool.model_validate(tool).model_dump(exclude_none=True)  # keys in the client's order
    expected = openai_client.chat.completions.create(model="tiny", messages=openai_history, tools=[sent],
                                                     max_tokens=12, temperature=0)
    assert answer.prompt_eval_count == expected.usage.prompt_tokens  # the same prompt, calls and result read
    assert answer.message.content == (expected.choices[0].message.content or "")


def test_the_model_lists_and_details(clients, served):
    client, _ = clients
    names = {model.model for model in client.list().models}
    assert {"tiny:latest", "plain:latest"} <= names
    assert {model.model for model in client.ps().models} == names
    shown = client.show("tiny")
    assert "<tool_call>" in shown.template and "tools" in shown.capabilities
    assert shown.modelinfo["context_length"] == 2048
    assert client.show("plain").capabilities == ["completion"]
    version = client._client.get("/api/version").json()["version"]
    assert version == client._client.get("/v2").json()["version"]


@pytest.mark.parametrize("call, fragment", [
    (lambda c: c.chat(model="absent", messages=ASK), "Request for unknown model: 'absent'"),
    (lambda c: c.show("absent"), "model 'absent' not found"),
    (lambda c: c.chat(model="tiny", messages=ASK, options={"mirostat": 2}), "'mirostat' is not supported"),
    (lambda c: c.chat(model="tiny", messages=ASK, options={"num_predict": 0}), "'num_predict' must be"),
    (lambda c: c.chat(model="tiny", messages=[{"role": "user", "content": "x", "images": ["aGk="]}]),
     "images are not supported"),
    (lambda c: c.chat(model="tiny", messages=ASK, think=True), '"tiny" does not support thinking'),
    (lambda c: c.generate(model="tiny", prompt="x", think=True), '"tiny" does not support thinking'),
    (lambda c: c.generate(model="thinker", prompt="x", raw=True, think=True), "'think' asks the template"),
    (lambda c: c.generate(model="tiny", prompt="x", suffix="y"), "'suffix' is not supported"),
    (lambda c: c.generate(model="tiny", prompt="x", system="s", raw=True), "the prompt is sent as it is"),
    (lambda c: c.embed(model="tiny", input="x"), "model 'tiny' takes no text"),
])
def test_refusals_name_the_problem(clients, call, fragment):
    with pytest.raises(ollama.ResponseError) as refused:
        call(clients[0])
    assert fragment in refused.value.error and refused.value.status_code in (400, 404)


def test_langchain_chat_ollama_answers_as_the_ollama_client(clients, served):
    from langchain_ollama import ChatOllama

    chat = ChatOllama(model="tiny", base_url=f"http://{served.http_url}", temperature=0, num_predict=12)
    answer = chat.invoke(ASK[0]["content"])
    assert answer.content == clients[0].chat(model="tiny", messages=ASK, options=GREEDY).message.content
    assert answer.usage_metadata["input_tokens"] > 0


def test_a_streamed_answer_that_calls_a_tool_ends_in_a_line_with_the_call_its_arguments_an_object():
    """The lines of a chat whose model writes text, then a Hermes call, token by token (a random model
    cannot be made to call in Ollama's API, which has no logit bias): the text streams, the call comes
    whole in one line with its arguments as an object, as Ollama sends them, then the line with `done`."""
    import asyncio

    from server.api.ollama.routes import _chat_lines, _Reply
    from server.api.openai.streaming import ToolCallChoices
    from server.core.types import FinishReason, TokenEvent
    from server.text.tools import parse, streamable

    text = 'Let me look.\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "utc"}}\n</tool_call>'
    pieces = [text[i:i + 5] for i in range(0, len(text), 5)]

    class Tokens:
        def __init__(self):
            self.closed = False

        async def __aiter__(self):
            for n, piece in enumerate(pieces):
                last = n == len(pieces) - 1
                yield TokenEvent([n], piece, FinishReason.STOP if last else None, 7, n + 1)

        async def aclose(self):
            self.closed = True

    async def lines():
        tokens = Tokens()
        shape = ToolCallChoices(lambda text: parse(text, "hermes", {"get_time"}),
                                lambda text, sent: streamable(text, "hermes", sent))
        answer = [json.loads(line) async for line in _chat_lines(tokens, shape, _Reply("tiny", 0))]
        return answer, tokens.closed

    answer, closed = asyncio.run(lines())
    assert closed and answer[-1]["done"] and answer[-1]["done_reason"] == "stop"
    assert answer[-1]["eval_count"] == len(pieces) and answer[-1]["prompt_eval_count"] == 7
    streamed = "".join(line["message"]["content"] for line in answer)
    assert streamed == "Let me look.\n" and "<tool_call>" not in streamed
    [call_line] = [line for line in answer if line["message"].get("tool_calls")]
    assert call_line["message"]["tool_calls"] == [{"function": {"name": "get_time",
                                                                 "arguments": {"zone": "utc"}}}]


def test_think_gives_a_reasoning_models_thinking_apart_whole_and_streamed(clients):
    """`thinker` opens each answer inside <think> (DeepSeek-R1's template) and the random model never
    closes it, so with `think` all its text is thinking, as the OpenAI route's `reasoning_content`."""
    client, openai_client = clients
    whole = client.chat(model="thinker", messages=ASK, think=True, options=GREEDY).message
    expected = openai_client.chat.completions.create(model="thinker", messages=ASK, max_tokens=12,
                                                     temperature=0).choices[0].message
    assert whole.thinking == expected.model_extra["reasoning_content"] and whole.thinking
    assert whole.content == ""
    streamed = list(client.chat(model="thinker", messages=ASK, think=True, options=GREEDY, stream=True))
    assert "".join(part.message.thinking or "" for part in streamed).strip() == whole.thinking
    unsplit = client.chat(model="thinker", messages=ASK, think=False, options=GREEDY).message
    assert unsplit.thinking is None and unsplit.content.strip() == whole.thinking
    generated = client.generate(model="thinker", prompt=ASK[0]["content"], think=True, options=GREEDY)
    assert (generated.thinking.strip(), generated.response) == (whole.thinking, "")
    parts = list(client.generate(model="thinker", prompt=ASK[0]["content"], think=True, options=GREEDY,
                                 stream=True))
    assert "".join(part.thinking or "" for part in parts).strip() == generated.thinking and parts[-1].done
    assert client.generate(model="thinker", prompt=ASK[0]["content"], options=GREEDY).thinking is None
