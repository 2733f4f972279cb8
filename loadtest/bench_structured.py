"""Structured outputs with the default chat model (`chat`, trained by `make models`): whether answers to 200
varied JSON schemas parse and validate, and the decode speed of 16 constrained streams against 16 free
ones in interleaved rounds (the grammar's token mask is computed per row before it samples). Writes the
"structured outputs" section of BENCHMARKS.md.

    python -m loadtest.bench_structured --repository model_repository [--rounds 9] [--tokens 128]
"""

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import jsonschema

from loadtest import report
from loadtest.schemas import varied_schemas
from loadtest.server_process import start_server, stop_server

MODEL, STREAMS = "chat", 16
ASK = [{"role": "user", "content": "Describe the json module as JSON."}]
# JSON whose documents do not end within the tokens asked for: a constrained row decodes as long as a free one
LONG_JSON = {"type": "array", "items": {"type": "string"}, "minItems": 400}


async def schemas_row(client: httpx.AsyncClient, count: int) -> tuple[int, int, int]:
    """(valid, cut by max_tokens, invalid) over `count` schemas, 8 requests at a time."""
    slots, outcomes = asyncio.Semaphore(8), []

    async def one(index, schema):
        async with slots:
            body = {"model": MODEL, "messages": ASK, "max_tokens": 400, "seed": index,
                    "response_format": {"type": "json_schema", "json_schema": {"name": f"s{index}",
                                                                               "schema": schema}}}
            choice = (await client.post("/v1/chat/completions", json=body)).json()["choices"][0]
        if choice["finish_reason"] == "length":
            return "cut"
        try:
            jsonschema.validate(json.loads(choice["message"]["content"]), schema)
        except (ValueError, jsonschema.ValidationError):
            return "invalid"
        return "valid"

    outcomes = await asyncio.gather(*(one(i, s) for i, s in enumerate(varied_schemas(count))))
    return outcomes.count("valid"), outcomes.count("cut"), outcomes.count("invalid")


async def tokens_per_second(client: httpx.AsyncClient, tokens: int, constrained: bool) -> float:
    """16 streams at once, each `tokens` long: generated tokens over the wall time."""
    schema = {"type": "json_schema", "json_schema": {"name": "strings", "schema": LONG_JSON}}
    extra = {"response_format": schema} if constrained else {}

    async def one(index):
        body = {"model": MODEL, "messages": ASK, "max_tokens": tokens, "ignore_eos": True, "seed": index,
                "temperature": 1.0, **extra}
        answer = (await client.post("/v1/chat/completions", json=body)).json()
        return answer["usage"]["completion_tokens"]

    started = time.perf_counter()
    generated = await asyncio.gather(*(one(i) for i in range(STREAMS)))
    return sum(generated) / (time.perf_counter() - started)


async def measure(url: str, rounds: int, tokens: int, schemas: int):
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await tokens_per_second(client, 8, True)  # warm: the grammar compiled, the sessions run
        speeds = []
        for index in range(rounds):
            order = (True, False) if index % 2 == 0 else (False, True)
            pair = {kind: await tokens_per_second(client, tokens, kind) for kind in order}
            speeds.append((pair[True], pair[False]))
        return await schemas_row(client, schemas), speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--schemas", type=int, default=200)
    args = parser.parse_args()
    if not (args.repository / MODEL).exists():
        raise SystemExit(f"no '{MODEL}' model in {args.repository}: run `make models` first")
    log = Path(tempfile.mkdtemp()) / "server.log"
    server = start_server(args.repository, log, "--model-control-mode", "explicit", "--load-model", MODEL,
                          ready_model=MODEL, timeout=300)
    try:
        (valid, cut, invalid), speeds = asyncio.run(
            measure(f"http://{server.http_url}", args.rounds, args.tokens, args.schemas))
    finally:
        stop_server(server)
    ratios = [constrained / free for constrained, free in speeds]
    median = statistics.median(ratios)
    rows = [[f"round {i + 1}", f"{c:.0f}", f"{f:.0f}", f"{r:.3f}x"] for i, ((c, f), r) in
            enumerate(zip(speeds, ratios))]
    rows.append(["**median**", f"{statistics.median(c for c, _ in speeds):.0f}",
                 f"{statistics.median(f for _, f in speeds):.0f}", f"**{median:.3f}x**"])
    body = (
        f"{report.machine()}. `python -m loadtest.bench_structured --rounds {args.rounds} --tokens "
        f"{args.tokens} --schemas {args.schemas}`, the default `chat` model.\n\n"
        f"JSON schemas ({args.schemas} varied: nested objects, arrays, enums, required fields; "
        f"`response_format` json_schema, max_tokens 400): **{valid} valid**, {cut} cut by max_tokens, "
        f"{invalid} invalid. {report.judged('every answer parses and validates', valid == args.schemas)}\n\n"
        f"Decode speed, {STREAMS} streams of {args.tokens} tokens at once (`ignore_eos`), constrained by a "
        f"JSON schema (`response_format` json_schema `{json.dumps(LONG_JSON)}`) against free, interleaved "
        f"rounds (tokens/s):\n\n"
        + report.table(["round", "constrained", "free", "constrained / free"], rows)
        + f"\n\n{report.judged('constrained >= 0.9x free', median >= 0.9)}\n"
    )
    report.write_section("structured outputs", "## Structured outputs\n\n" + body)
    print(body)


if __name__ == "__main__":
    main()
