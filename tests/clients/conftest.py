"""Shared setup for the client suites: the server under test and a raw HTTP helper.

Every suite runs in its own virtual environment (the client packages pin conflicting
huggingface_hub versions), so this file uses the standard library only. The server is
given by environment variables:

    WICK_URL       base URL of a running `wick serve`, e.g. http://127.0.0.1:3000
    WICK_API_KEY   the --api-key it was started with

`scripts/client_tests.sh` starts the server, sets both and runs every suite.
"""

import json
import os
import urllib.error
import urllib.request

import pytest

# A prompt and a generation length small enough for a 2-core machine.
# (An instruct model: a raw question gets the end-of-turn token at once, a sentence to
# complete gets a continuation.)
PROMPT = "The capital of France is"
MAX_NEW_TOKENS = 12
CHAT = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
]


def _required_env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise pytest.UsageError(f"{name} is not set: run scripts/client_tests.sh, or set it to a running wick serve")
    return value


@pytest.fixture(scope="session")
def url() -> str:
    return _required_env("WICK_URL").rstrip("/")


@pytest.fixture(scope="session")
def api_key() -> str:
    return _required_env("WICK_API_KEY")


class Raw:
    """Minimal HTTP client (urllib) for cross-checking what a client library returns."""

    def __init__(self, base: str, key: str):
        self.base = base
        self.key = key

    def request(self, method, path, body=None, token=True, headers=None, data=None):
        hdrs = dict(headers or {})
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if token:
            hdrs["Authorization"] = f"Bearer {self.key if token is True else token}"
        req = urllib.request.Request(self.base + path, data=data, headers=hdrs, method=method)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, method, path, body=None, **kw):
        status, headers, raw = self.request(method, path, body, **kw)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return status, headers, parsed

    def generate(self, prompt=PROMPT, **parameters):
        """Greedy `/generate` of `prompt`: the reference the client suites compare with."""
        parameters.setdefault("max_new_tokens", MAX_NEW_TOKENS)
        status, _, body = self.json("POST", "/generate", {"inputs": prompt, "parameters": parameters})
        assert status == 200, body
        return body

    def chat(self, messages=CHAT, **fields):
        fields.setdefault("max_tokens", MAX_NEW_TOKENS)
        fields.setdefault("temperature", 0)
        status, _, body = self.json(
            "POST", "/v1/chat/completions", {"model": "tgi", "messages": messages, **fields}
        )
        assert status == 200, body
        return body


@pytest.fixture(scope="session")
def raw(url, api_key) -> Raw:
    return Raw(url, api_key)


@pytest.fixture(scope="session")
def greedy(raw):
    """The server's greedy continuation of PROMPT (MAX_NEW_TOKENS tokens, details)."""
    body = raw.generate(PROMPT, details=True)
    assert body["generated_text"], body
    return body


def parse_sse(raw_bytes: bytes):
    """Server-sent events as (event data strings), in order."""
    events = []
    for block in raw_bytes.decode().replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].lstrip(" ") for line in block.split("\n") if line.startswith("data:")]
        if data:
            events.append("\n".join(data))
    return events


# Structured output and tools (bounded, so every constrained answer ends within
# STRUCTURED_TOKENS; the model is tiny, so the tests check shape and schema, not content).
STRUCTURED_TOKENS = 80
PERSON_PROMPT = "Describe a user of a web site as JSON."
PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}


def check_person(value):
    """PERSON_SCHEMA, checked by hand (the client environments have no validator)."""
    assert isinstance(value, dict) and set(value) == {"name", "age", "role"}, value
    assert isinstance(value["name"], str) and len(value["name"]) <= 12, value
    assert isinstance(value["age"], int) and not isinstance(value["age"], bool), value
    assert 0 <= value["age"] <= 120, value
    assert value["role"] in ("admin", "user", "guest"), value


WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city",
            "parameters": WEATHER_PARAMETERS,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Adds two integers",
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"type": "integer", "minimum": 0, "maximum": 1000},
                    "b": {"type": "integer", "minimum": 0, "maximum": 1000},
                },
                "required": ["a", "b"],
                "additionalProperties": False,
            },
        },
    },
]
WEATHER_CHAT = [{"role": "user", "content": "What is the weather in Paris?"}]


def check_tool_arguments(name, arguments):
    """A call's arguments (a dict, or the JSON string OpenAI sends) against its tool."""
    if isinstance(arguments, str):
        arguments = json.loads(arguments)
    if name == "get_weather":
        assert set(arguments) == {"city", "unit"}, arguments
        assert isinstance(arguments["city"], str) and len(arguments["city"]) <= 12, arguments
        assert arguments["unit"] in ("celsius", "fahrenheit"), arguments
    else:
        assert name == "add", name
        assert set(arguments) == {"a", "b"}, arguments
        assert all(isinstance(arguments[k], int) and 0 <= arguments[k] <= 1000 for k in "ab"), arguments
    return arguments
