"""OpenAI's Responses API (`/v1/responses`) against a real server process (conftest's `served`: a small
random Qwen2 chat model with a Hermes-style template, `tiny`), called with the `openai` package and the
OpenAI Agents SDK as agents call it (LangChain's `use_responses_api`: test_structured_outputs). A random
model writes nonsense: the tests judge the protocol, the constraints and the conversation, not the
words."""

import json
from typing import Literal

import httpx
import jsonschema
import openai
import pytest

from server.api.openai.responses import ResponseStore
from server.core.errors import NotFound
from tests.test_structured_outputs import BIAS, SCHEMAS, TOOLS, Verdict, marker_token

FUNCTIONS = [{"type": "function", **tool["function"]} for tool in TOOLS]  # Responses' flat tool shape
FREE = dict(model="tiny", max_output_tokens=12, temperature=0, extra_body={"ignore_eos": True})


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=f"http://{served.http_url}/v1", api_key="unused", max_retries=0)


def test_a_text_answer_whole_and_streamed_is_the_same_message(client):
    whole = client.responses.create(input="Say something.", instructions="Be brief.", **FREE)
    assert whole.object == "response" and whole.id.startswith("resp_")
    assert whole.status == "incomplete" and whole.incomplete_details.reason == "max_output_tokens"
    assert [item.type for item in whole.output] == ["message"] and whole.output_text
    assert whole.usage.output_tokens == 12 and whole.usage.total_tokens == whole.usage.input_tokens + 12
    assert whole.instructions == "Be brief." and whole.max_output_tokens == 12
    events = list(client.responses.create(input="Say something.", instructions="Be brief.", stream=True,
                                          **FREE))
    kinds = [event.type for event in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.incomplete"]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) >= 2 and "".join(deltas) == whole.output_text  # as generated, not one piece
    final = events[-1].response
    assert final.output_text == whole.output_text and final.usage.output_tokens == 12
    assert {event.item_id for event in events if hasattr(event, "item_id")} == {final.output[0].id}


def test_structured_output_parses_into_a_pydantic_model_streamed_or_not(client):
    parsed = client.responses.parse(model="tiny", input="Judge it.", text_format=Verdict,
                                    max_output_tokens=100)
    assert parsed.status == "completed" and isinstance(parsed.output_parsed, Verdict)
    with client.responses.stream(model="tiny", input="Judge it.", text_format=Verdict,
                                 max_output_tokens=100) as stream:
        final = stream.get_final_response()
    assert isinstance(final.output_parsed, Verdict)


def assert_valid_calls(items, names=tuple(SCHEMAS)):
    calls = [item for item in items if item.type == "function_call"]
    assert calls
    for call in calls:
        assert call.call_id.startswith("call_") and call.id.startswith("fc_") and call.name in names
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
    return calls


def test_forced_calls_whole_and_streamed(client):
    named = client.responses.create(model="tiny", input="Weather?", tools=FUNCTIONS, max_output_tokens=200,
                                    tool_choice={"type": "function", "name": "get_weather"},
                                    parallel_tool_calls=False)
    assert named.status == "completed" and named.output_text == ""
    assert_valid_calls(named.output, ("get_weather",))
    events = list(client.responses.create(model="tiny", input="Time?", tools=FUNCTIONS,
                                          tool_choice="required", parallel_tool_calls=False,
                                          max_output_tokens=200, stream=True))
    done = [event.item for event in events if event.type == "response.output_item.done"]
    [call] = assert_valid_calls(done)
    arguments = [event for event in events if event.type == "response.function_call_arguments.done"]
    assert [event.arguments for event in arguments] == [call.arguments]
    assert events[-1].type == "response.completed" and events[-1].response.output[-1].call_id == call.call_id


def test_a_tool_round_trip_sent_whole_or_by_previous_response_id_reads_the_same_conversation(client):
    asked = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.responses.create(model="tiny", input=asked, tools=FUNCTIONS, tool_choice="required",
                                    parallel_tool_calls=False, max_output_tokens=200)
    [call] = assert_valid_calls(first.output)
    result = {"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature": 21}'}
    after = dict(model="tiny", tools=FUNCTIONS, max_output_tokens=4, extra_body={"ignore_eos": True})
    sent_back = [item.model_dump(exclude_none=True) for item in first.output]  # as an agent loop does
    whole = client.responses.create(input=[*asked, *sent_back, result], **after)
    chained = client.responses.create(input=[result], previous_response_id=first.id, **after)
    assert whole.usage.input_tokens > first.usage.input_tokens  # the call and its result were read
    assert chained.usage.input_tokens == whole.usage.input_tokens  # the same conversation, rendered alike
    assert chained.previous_response_id == first.id
    again = client.responses.retrieve(chained.id)
    assert again.model_dump() == chained.model_dump()
    listed = list(client.responses.input_items.list(whole.id, order="asc", limit=1))  # page by page
    assert [(item.type, item.id) for item in listed[1:3]] == [("function_call", call.id),
                                                              ("function_call_output", listed[2].id)]
    assert listed[0].content[0].text == asked[0]["content"] and listed[0].role == "user"
    newest = client.responses.input_items.list(whole.id).data  # newest first, 20 at most
    assert [item.id for item in newest] == [item.id for item in reversed(listed)] and len(newest) == 3
    [own] = client.responses.input_items.list(chained.id).data  # a response's own input, not its history
    assert own.type == "function_call_output" and own.call_id == call.call_id


@pytest.mark.parametrize("query, status, fragment", [
    ("order=up", 400, "'order' must be asc or desc, got 'up'"),
    ("limit=0", 400, "'limit' must be an integer from 1 to 100, got 0"),
    ("limit=x", 400, "'limit' must be an integer from 1 to 100, got 'x'"),
    ("after=msg_nope", 400, "'after' must be an item id of response"),
])
def test_bad_input_item_listings_are_refused_naming_the_problem(client, served, query, status, fragment):
    stored = client.responses.create(input="Hi.", **FREE)
    answer = httpx.get(f"http://{served.http_url}/v1/responses/{stored.id}/input_items?{query}")
    assert answer.status_code == status and fragment in answer.json()["error"]["message"], answer.text
    missing = httpx.get(f"http://{served.http_url}/v1/responses/resp_nope/input_items")
    assert missing.status_code == 404 and "resp_nope" in missing.json()["error"]["message"]


def test_stored_responses_can_be_read_and_deleted_and_unstored_ones_are_not_kept(client):
    kept = client.responses.create(input="Hi.", **FREE)
    assert client.responses.retrieve(kept.id).output_text == kept.output_text
    client.responses.delete(kept.id)
    with pytest.raises(openai.NotFoundError, match=kept.id):
        client.responses.retrieve(kept.id)
    unstored = client.responses.create(input="Hi.", store=False, **FREE)
    with pytest.raises(openai.NotFoundError, match="store true"):
        client.responses.create(input="And?", previous_response_id=unstored.id, **FREE)


def test_a_reasoning_models_thinking_is_a_reasoning_item_before_its_message(client, served):
    """`thinker` opens each answer inside <think> (DeepSeek-R1's template); a bias on `</think>` makes the
    random model close it after a few tokens. Sent back as input, the reasoning item becomes the answer's
    `reasoning_content`, which this template leaves out as it leaves past thinking out: the same
    conversation as by previous_response_id."""
    asked = {"role": "user", "content": "Think, then say."}
    ask = dict(model="thinker", max_output_tokens=40, temperature=1.0, extra_body={
        "ignore_eos": True, "seed": 2, "logit_bias": {str(marker_token(served, "</think>")): BIAS}})
    whole = client.responses.create(input=[asked], **ask)
    thought, message = whole.output
    assert thought.type == "reasoning" and thought.id.startswith("rs_") and thought.status == "completed"
    assert message.type == "message"
    [part] = thought.content
    assert part.type == "reasoning_text" and part.text and "</think>" not in part.text
    assert whole.output_text == message.content[0].text
    events = list(client.responses.create(input=[asked], stream=True, **ask))
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event.delta for event in events if event.type == "response.reasoning_text.delta"]
    assert "".join(deltas) == part.text and len(deltas) >= 2  # as generated, not one piece
    added = [(event.output_index, event.item.type) for event in events if event.type.endswith("item.added")]
    assert added == [(0, "reasoning"), (1, "message")]
    kinds = [event.type for event in events]
    assert kinds.index("response.output_item.done") < kinds.index("response.output_text.delta")
    assert {event.output_index for event in events if "output_text" in event.type} == {1}
    final = events[-1].response
    assert final.output[0].content == thought.content and final.output_text == whole.output_text
    unthought = client.responses.create(input=[asked], reasoning={"effort": "none", "summary": "auto"}, **ask)
    assert [item.type for item in unthought.output] == ["message"]  # the template closed the block at once
    assert unthought.reasoning.effort == "none" and whole.reasoning.effort is None
    chat = client.chat.completions.create(model="thinker", messages=[asked], max_tokens=4, temperature=0,
                                          reasoning_effort="none").choices[0].message
    assert "reasoning_content" not in (chat.model_extra or {})
    after = dict(model="thinker", max_output_tokens=2, extra_body={"ignore_eos": True})
    again = {"role": "user", "content": "And?"}
    sent_back = [item.model_dump(exclude_none=True) for item in whole.output]
    replayed = client.responses.create(input=[asked, *sent_back, again], **after)
    chained = client.responses.create(input=[again], previous_response_id=whole.id, **after)
    assert replayed.usage.input_tokens == chained.usage.input_tokens > whole.usage.input_tokens


@pytest.mark.parametrize("body, fragment", [
    ({"tools": [{"type": "web_search"}]}, "tools[0] must be {\"type\": \"function\""),
    ({"tools": [{"type": "function", "name": "bad name"}]}, "tools[0].name must be letters"),
    ({"max_output_tokens": 0}, "'max_output_tokens' must be an integer >= 1, got 0"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0][0] must be an input_text part"),
    ({"input": [{"type": "file_search_call"}]}, "input[0] must be a message, function_call"),
    ({"input": [{"type": "function_call_output", "output": "1"}]}, "needs 'call_id'"),
    ({"include": ["file_search_call.results"]}, "'include' may hold only"),
    ({"reasoning": {"summary": "detailed"}}, "'reasoning.summary' 'detailed' is not supported"),
    ({"reasoning": {"effort": "huge"}}, "'reasoning.effort' must be one of none, minimal, low"),
    ({"text": {"format": {"type": "yaml"}}}, "'text.format' must be"),
    ({"text": "json"}, "'text' must be an object"),
    ({"tool_choice": {"type": "file_search"}}, "'tool_choice' must be none, auto, required"),
    ({"previous_response_id": "resp_nope"}, "No response found with id 'resp_nope'"),
    ({"model": "nope"}, "nope"),
])
def test_bad_requests_are_refused_naming_the_problem(served, body, fragment):
    url = f"http://{served.http_url}/v1/responses"
    answer = httpx.post(url, json={"model": "tiny", "input": "Hi", **body})
    assert answer.status_code in (400, 404) and fragment in answer.json()["error"]["message"], answer.text
    assert (answer.json()["error"]["code"] == "model_not_found") == ("model" in body)


def test_the_store_forgets_the_oldest_beyond_its_capacity():
    store = ResponseStore(capacity=2)
    for name in "abc":
        store.put({"id": name}, [{"role": "user", "content": name}])
    with pytest.raises(NotFound, match="'a'"):
        store.get("a")
    assert store.conversation("c") == [{"role": "user", "content": "c"}] and store.get("b") == {"id": "b"}


@pytest.mark.parametrize("model", ["tiny", "thinker"])
def test_an_openai_agents_sdk_agent_calls_its_tool_and_answers(served, model):
    """The OpenAI Agents SDK's loop: the model calls the function tool (forced on the first turn), the
    SDK runs it and sends the result back, the model answers (its tool choice reset to auto) in the
    agent's output type (a random model's free text would run to max_tokens, which the SDK takes as a
    failure). `thinker` thinks first each turn (a bias on `</think>` ends its thinking soon), and the SDK
    sends its reasoning items back with the rest."""
    from typing import Annotated

    from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
    from pydantic import Field

    set_tracing_disabled(True)  # its traces would go to OpenAI's servers
    called = []

    @function_tool
    def get_weather(city: Annotated[str, Field(max_length=8)], unit: Literal["c", "f"]) -> str:
        """The weather in a city."""
        called.append((city, unit))
        return "21 degrees"

    client = openai.AsyncOpenAI(base_url=f"http://{served.http_url}/v1", api_key="unused", max_retries=0)
    thinking = {"seed": 1, "logit_bias": {str(marker_token(served, "</think>")): BIAS}}
    agent = Agent(name="weather", instructions="Answer with the tool's help.", tools=[get_weather],
                  model=OpenAIResponsesModel(model=model, openai_client=client), output_type=Verdict,
                  model_settings=ModelSettings(tool_choice="required", max_tokens=300,
                                               temperature=1.0 if model == "thinker" else 0,
                                               extra_body=thinking if model == "thinker" else None))
    result = Runner.run_sync(agent, "Weather in Paris?", max_turns=3)
    assert len(called) == 1 and len(called[0][0]) <= 8 and called[0][1] in ("c", "f")
    first, second = result.raw_responses
    thoughts = [item.type == "reasoning" for response in (first, second) for item in response.output[:1]]
    assert thoughts == [model == "thinker"] * 2
    assert isinstance(result.final_output, Verdict)
    assert second.usage.input_tokens > first.usage.input_tokens  # the call and its result were sent back
