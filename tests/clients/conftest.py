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
