"""Raw HTTP with `requests`: TGI's routes, the OpenAI model list, auth, error shapes, and the
chat prompt checked against the reference rendering of the model's template."""

import json
from pathlib import Path

import pytest
import requests

from conftest import MAX_NEW_TOKENS, PROMPT, parse_sse

TIMEOUT = 120


@pytest.fixture(scope="module")
def s(api_key):
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {api_key}"
    yield session
    session.close()


def events(resp):
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream"), resp.headers
    return [json.loads(e) for e in parse_sse(resp.content)]


def check_stream(evts, greedy_text=None, details=True, prefix=""):
    """TGI's stream: one event per token, the last with generated_text (and details when
    the request asked for them)."""
    assert evts, "no events"
    *tokens, last = evts
    for e in tokens:
        assert e["generated_text"] is None and e["details"] is None, e
    indexes = [e["index"] for e in evts]
    assert indexes == list(range(indexes[0], indexes[0] + len(evts))), indexes
    text = "".join(e["token"]["text"] for e in evts if not e["token"]["special"])
    assert last["generated_text"] == prefix + text
    if greedy_text is not None:
        assert text == greedy_text
    d = last["details"]
    if not details:
        assert d is None, d
        return last
    assert d["finish_reason"] in ("length", "eos_token", "stop_sequence"), d
    assert d["generated_tokens"] == len(evts)
    assert d["input_length"] > 0
    return last


def test_health_needs_no_token(url):
    r = requests.get(url + "/health", timeout=TIMEOUT)
    assert r.status_code == 200


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("POST", "/generate", {"inputs": PROMPT}),
        ("POST", "/generate_stream", {"inputs": PROMPT}),
        ("POST", "/", {"inputs": PROMPT}),
        ("POST", "/tokenize", {"inputs": PROMPT}),
        ("GET", "/info", None),
        ("GET", "/metrics", None),
    ],
)
@pytest.mark.parametrize("auth", [None, "Bearer wrong-key", "wrong-scheme"])
def test_tgi_routes_need_the_token(url, api_key, method, path, body, auth):
    headers = {} if auth is None else {"Authorization": auth.replace("wrong-scheme", f"Basic {api_key}")}
    r = requests.request(method, url + path, json=body, headers=headers, timeout=TIMEOUT)
    assert r.status_code == 401, (r.status_code, r.text)
    assert isinstance(r.json()["error"], str) and r.json()["error"]


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("GET", "/v1/models", None),
        ("POST", "/v1/chat/completions", {"model": "tgi", "messages": [{"role": "user", "content": "hi"}]}),
        ("POST", "/v1/completions", {"model": "tgi", "prompt": "hi"}),
    ],
)
def test_openai_routes_need_the_token_and_answer_in_openai_shape(url, method, path, body):
    r = requests.request(method, url + path, json=body, headers={"Authorization": "Bearer nope"}, timeout=TIMEOUT)
    assert r.status_code == 401, r.text
    err = r.json()["error"]
    assert isinstance(err, dict) and err["message"], err


def test_info(s, url):
    r = s.get(url + "/info", timeout=TIMEOUT)
    assert r.status_code == 200
    info = r.json()
    assert info["model_id"]
    for key in ("max_concurrent_requests", "max_best_of", "max_stop_sequences", "max_input_tokens", "max_total_tokens"):
        assert isinstance(info[key], int) and info[key] > 0, (key, info)
    assert info["max_input_tokens"] < info["max_total_tokens"]
    assert info["version"]


def test_tokenize_offsets_cover_the_input(s, url):
    text = "Hello world, the sky is blue."
    r = s.post(url + "/tokenize", json={"inputs": text, "add_special_tokens": False}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    toks = r.json()
    assert len(toks) >= 6
    assert all(isinstance(t["id"], int) for t in toks)
    for t in toks:
        assert text[t["start"] : t["stop"]] == t["text"], t
    assert "".join(t["text"] for t in toks) == text
    assert [t["start"] for t in toks[1:]] == [t["stop"] for t in toks[:-1]]


def test_generate_details_and_headers(s, url):
    body = {
        "inputs": PROMPT,
        "parameters": {"max_new_tokens": MAX_NEW_TOKENS, "details": True, "decoder_input_details": True},
    }
    r = s.post(url + "/generate", json=body, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    out = r.json()
    text, d = out["generated_text"], out["details"]
    assert text.strip()
    assert d["finish_reason"] in ("length", "eos_token")
    assert d["generated_tokens"] == len(d["tokens"])
    if d["finish_reason"] == "length":
        assert d["generated_tokens"] == MAX_NEW_TOKENS
    assert "".join(t["text"] for t in d["tokens"] if not t["special"]) == text
    assert all(t["logprob"] <= 0 for t in d["tokens"])
    # decoder_input_details: the prompt's tokens, the first without a logprob.
    prefill = d["prefill"]
    assert prefill and prefill[0]["logprob"] is None
    assert all(p["logprob"] <= 0 for p in prefill[1:])
    assert int(r.headers["x-generated-tokens"]) == d["generated_tokens"]
    assert int(r.headers["x-prompt-tokens"]) == len(prefill)
    for h in ("x-compute-time", "x-time-per-token", "x-queue-time", "x-inference-time"):
        assert float(r.headers[h]) >= 0, h


def test_generate_stream_matches_generate(s, url, greedy):
    r = s.post(
        url + "/generate_stream",
        json={"inputs": PROMPT, "parameters": {"max_new_tokens": MAX_NEW_TOKENS, "details": True}},
        timeout=TIMEOUT,
    )
    last = check_stream(events(r), greedy["generated_text"])
    assert last["details"]["finish_reason"] == greedy["details"]["finish_reason"]
    assert last["details"]["generated_tokens"] == greedy["details"]["generated_tokens"]


def tgi_client_body(stream):
    """What text_generation.Client and InferenceClient send: every parameter, nulls included."""
    return {
        "inputs": PROMPT,
        "parameters": {
            "best_of": None,
            "decoder_input_details": False,
            "details": True,
            "do_sample": False,
            "frequency_penalty": None,
            "grammar": None,
            "max_new_tokens": MAX_NEW_TOKENS,
            "repetition_penalty": None,
            "return_full_text": False,
            "seed": None,
            "stop": [],
            "temperature": None,
            "top_k": None,
            "top_n_tokens": None,
            "top_p": None,
            "truncate": None,
            "typical_p": None,
            "watermark": False,
            "adapter_id": None,
        },
        "stream": stream,
    }


def test_compat_root_answers_a_list(s, url, greedy):
    r = s.post(url + "/", json=tgi_client_body(False), timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    out = r.json()
    assert isinstance(out, list) and len(out) == 1, out
    assert out[0]["generated_text"] == greedy["generated_text"]
    assert out[0]["details"]["generated_tokens"] == greedy["details"]["generated_tokens"]


def test_compat_root_streams(s, url, greedy):
    r = s.post(url + "/", json=tgi_client_body(True), timeout=TIMEOUT)
    check_stream(events(r), greedy["generated_text"])


def test_stream_without_details_ends_with_the_text_only(s, url, greedy):
    # As TGI: the last event carries details only when the request asks for them.
    r = s.post(
        url + "/generate_stream",
        json={"inputs": PROMPT, "parameters": {"max_new_tokens": MAX_NEW_TOKENS}},
        timeout=TIMEOUT,
    )
    check_stream(events(r), greedy["generated_text"], details=False)


@pytest.fixture(scope="module")
def compat_full_text(s, url):
    """TGI's `POST /` default for an unset return_full_text: true when the model's pipeline
    tag is text-generation (the Inference API convention), else false."""
    return s.get(url + "/info", timeout=TIMEOUT).json().get("model_pipeline_tag") == "text-generation"


@pytest.mark.parametrize("unset", ["absent", "null"])
def test_compat_root_return_full_text_default(s, url, greedy, compat_full_text, unset):
    params = {"max_new_tokens": MAX_NEW_TOKENS}
    if unset == "null":
        params["return_full_text"] = None
    prefix = PROMPT if compat_full_text else ""
    r = s.post(url + "/", json={"inputs": PROMPT, "parameters": params}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.json()[0]["generated_text"] == prefix + greedy["generated_text"]
    r = s.post(url + "/", json={"inputs": PROMPT, "parameters": params, "stream": True}, timeout=TIMEOUT)
    check_stream(events(r), greedy["generated_text"], details=False, prefix=prefix)
    # /generate itself defaults to false.
    r = s.post(url + "/generate", json={"inputs": PROMPT, "parameters": params}, timeout=TIMEOUT)
    assert r.json()["generated_text"] == greedy["generated_text"]


def test_return_full_text_prepends_the_prompt(s, url, greedy):
    r = s.post(
        url + "/generate",
        json={"inputs": PROMPT, "parameters": {"max_new_tokens": MAX_NEW_TOKENS, "return_full_text": True}},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text
    assert r.json()["generated_text"] == PROMPT + greedy["generated_text"]


def test_vast_wrapper(s, url, greedy):
    wrapped = {
        "auth_data": {"signature": "x", "cost": "1", "endpoint": "e", "reqnum": 1, "url": "u"},
        "payload": {"inputs": PROMPT, "parameters": {"max_new_tokens": MAX_NEW_TOKENS}},
    }
    r = s.post(url + "/generate", json=wrapped, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.json()["generated_text"] == greedy["generated_text"]


def test_v1_models(s, url):
    r = s.get(url + "/v1/models", timeout=TIMEOUT)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert len(body["data"]) == 1
    m = body["data"][0]
    assert m["id"] and m["object"] == "model" and isinstance(m["created"], int) and m["owned_by"]


def test_metrics_count_requests(s, url):
    r = s.get(url + "/metrics", timeout=TIMEOUT)
    assert r.status_code == 200
    assert "tgi_request_count" in r.text
    counts = [
        float(line.split()[-1])
        for line in r.text.splitlines()
        if line.startswith("tgi_request_count") and not line.startswith("#")
    ]
    assert counts and sum(counts) >= 1, r.text[:2000]


@pytest.mark.parametrize(
    "parameters",
    [
        {"temperature": 0},
        {"temperature": -1.0},
        {"top_p": 1.5},
        {"top_p": 0},
        {"top_k": 0},
        {"repetition_penalty": 0},
        {"typical_p": 1.5},
        {"max_new_tokens": 0},
        {"max_new_tokens": 10_000_000},
        {"stop": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"]},
        {"top_n_tokens": 1000},
        {"best_of": 2},  # needs sampling
        {"truncate": 0},
    ],
)
def test_invalid_parameters_are_422_validation(s, url, parameters):
    r = s.post(url + "/generate", json={"inputs": PROMPT, "parameters": parameters}, timeout=TIMEOUT)
    assert r.status_code == 422, (parameters, r.status_code, r.text)
    body = r.json()
    assert body["error"] and body["error_type"] == "validation", body


def test_empty_inputs_are_422(s, url):
    r = s.post(url + "/generate", json={"inputs": "", "parameters": {"max_new_tokens": 4}}, timeout=TIMEOUT)
    assert r.status_code == 422, r.text
    assert r.json()["error_type"] == "validation"


def test_best_of_with_stream_is_422(s, url):
    body = {"inputs": PROMPT, "parameters": {"best_of": 2, "do_sample": True, "max_new_tokens": 4}}
    r = s.post(url + "/generate_stream", json=body, timeout=TIMEOUT)
    assert r.status_code == 422, r.text
    assert r.json()["error_type"] == "validation"


@pytest.mark.parametrize(
    "data,content_type",
    [
        (b'{"inputs": "hi", "parameters": {', "application/json"),
        (b'{"parameters": {}}', "application/json"),
        (b'{"inputs": 5}', "application/json"),
        (b"inputs=hi", "application/x-www-form-urlencoded"),
    ],
)
def test_malformed_bodies_are_4xx_json(s, url, data, content_type):
    r = s.post(url + "/generate", data=data, headers={"Content-Type": content_type}, timeout=TIMEOUT)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.json()["error"], r.text


def test_openai_errors_have_openai_shape(s, url):
    r = s.post(
        url + "/v1/chat/completions",
        json={"model": "tgi", "messages": [{"role": "user", "content": "hi"}], "temperature": -1},
        timeout=TIMEOUT,
    )
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert isinstance(err, dict) and err["message"] and "type" in err, err


def test_unknown_route_is_404_json(s, url):
    r = s.get(url + "/no/such/route", timeout=TIMEOUT)
    assert r.status_code == 404
    assert r.json()["error"]


def test_chat_prompt_is_the_reference_rendering_of_the_model_template(s, url):
    """The default model's chat template, rendered by transformers' Jinja setup
    (tests/fixtures/chat_templates/smollm2.json), is exactly the prompt the chat route
    builds: the same prompt tokens and the same greedy answer as /generate on that text."""
    fixture = Path(__file__).resolve().parent.parent / "fixtures" / "chat_templates" / "smollm2.json"
    cases = {c["name"]: c for c in json.loads(fixture.read_text())["cases"]}
    checked = 0
    for name in ("system_user", "multi_turn", "content_parts", "whitespace_and_unicode"):
        case = cases[name]
        assert case["add_generation_prompt"] is True
        chat = s.post(
            url + "/v1/chat/completions",
            json={"model": "tgi", "messages": case["messages"], "max_tokens": 6, "temperature": 0},
            timeout=TIMEOUT,
        )
        assert chat.status_code == 200, chat.text
        gen = s.post(
            url + "/generate",
            json={"inputs": case["text"], "parameters": {"max_new_tokens": 6}},
            timeout=TIMEOUT,
        )
        assert gen.status_code == 200, gen.text
        body = chat.json()
        assert body["usage"]["prompt_tokens"] == int(gen.headers["x-prompt-tokens"]), name
        assert body["choices"][0]["message"]["content"] == gen.json()["generated_text"], name
        checked += 1
    assert checked == 4
