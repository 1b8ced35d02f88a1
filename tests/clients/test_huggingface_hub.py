"""huggingface_hub's InferenceClient pointed at the server's URL: text_generation (which
posts to `/`) and chat_completion (`/v1/chat/completions`), streaming and not."""

import json

import pytest
from huggingface_hub import InferenceClient

from conftest import (
    CHAT,
    MAX_NEW_TOKENS,
    PERSON_PROMPT,
    PERSON_SCHEMA,
    PROMPT,
    STRUCTURED_TOKENS,
    TOOLS,
    WEATHER_CHAT,
    check_person,
    check_tool_arguments,
)


@pytest.fixture(scope="module")
def client(url, api_key):
    return InferenceClient(model=url, token=api_key, timeout=120)


@pytest.fixture(scope="module")
def prefix(raw):
    """InferenceClient leaves return_full_text unset and posts to `/`, where TGI (and wick)
    prepend the prompt when the model's pipeline tag is text-generation."""
    _, _, info = raw.json("GET", "/info")
    return PROMPT if info.get("model_pipeline_tag") == "text-generation" else ""


@pytest.fixture(scope="module")
def chat_reference(raw):
    body = raw.chat(CHAT, max_tokens=MAX_NEW_TOKENS, temperature=0)
    assert body["choices"][0]["message"]["content"], body
    return body


def test_text_generation(client, greedy, prefix):
    out = client.text_generation(PROMPT, max_new_tokens=MAX_NEW_TOKENS)
    assert isinstance(out, str)
    assert out == prefix + greedy["generated_text"]
    out = client.text_generation(PROMPT, max_new_tokens=MAX_NEW_TOKENS, return_full_text=False)
    assert out == greedy["generated_text"]


def test_text_generation_details(client, greedy):
    out = client.text_generation(
        PROMPT, max_new_tokens=MAX_NEW_TOKENS, details=True, decoder_input_details=True, return_full_text=False
    )
    assert out.generated_text == greedy["generated_text"]
    d = out.details
    assert d.finish_reason == greedy["details"]["finish_reason"]
    assert d.generated_tokens == len(d.tokens) == greedy["details"]["generated_tokens"]
    assert [t.id for t in d.tokens] == [t["id"] for t in greedy["details"]["tokens"]]
    assert d.prefill and d.prefill[0].logprob is None


def test_text_generation_stream(client, greedy):
    pieces = list(client.text_generation(PROMPT, max_new_tokens=MAX_NEW_TOKENS, stream=True))
    assert all(isinstance(p, str) for p in pieces)
    assert len(pieces) == greedy["details"]["generated_tokens"]
    assert "".join(pieces) == greedy["generated_text"]


def test_text_generation_stream_details(client, greedy, prefix):
    outs = list(client.text_generation(PROMPT, max_new_tokens=MAX_NEW_TOKENS, stream=True, details=True))
    assert outs
    *head, last = outs
    assert all(o.details is None for o in head)
    assert last.details.finish_reason == greedy["details"]["finish_reason"]
    assert last.details.generated_tokens == len(outs)
    assert last.generated_text == prefix + greedy["generated_text"]
    assert "".join(o.token.text for o in outs if not o.token.special) == greedy["generated_text"]


def test_text_generation_with_stop_and_seed(client, greedy):
    words = greedy["generated_text"].split()
    stop = words[1] if len(words) > 1 else words[0]
    out = client.text_generation(
        PROMPT, max_new_tokens=MAX_NEW_TOKENS, stop=[stop], details=True, return_full_text=False
    )
    assert out.details.finish_reason == "stop_sequence"
    assert out.generated_text.endswith(stop)
    assert greedy["generated_text"].startswith(out.generated_text)

    a = client.text_generation(PROMPT, max_new_tokens=8, do_sample=True, temperature=0.8, seed=7, details=True)
    b = client.text_generation(PROMPT, max_new_tokens=8, do_sample=True, temperature=0.8, seed=7, details=True)
    assert a.generated_text == b.generated_text and a.details.seed == 7


def test_chat_completion(client, chat_reference):
    out = client.chat_completion(CHAT, max_tokens=MAX_NEW_TOKENS, temperature=0)
    choice = out.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == chat_reference["choices"][0]["message"]["content"]
    assert choice.finish_reason in ("length", "stop")
    u = out.usage
    assert u.prompt_tokens > 0 and 0 < u.completion_tokens <= MAX_NEW_TOKENS
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    if choice.finish_reason == "length":
        assert u.completion_tokens == MAX_NEW_TOKENS


def test_chat_completion_stream(client, chat_reference):
    chunks = list(
        client.chat_completion(
            CHAT,
            max_tokens=MAX_NEW_TOKENS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text == chat_reference["choices"][0]["message"]["content"]
    finish = [c.choices[0].finish_reason for c in with_choices if c.choices[0].finish_reason]
    assert finish == [chat_reference["choices"][0]["finish_reason"]]
    usage = [c.usage for c in chunks if c.usage]
    assert len(usage) == 1, usage
    ref = chat_reference["usage"]
    assert (usage[0].prompt_tokens, usage[0].completion_tokens, usage[0].total_tokens) == (
        ref["prompt_tokens"],
        ref["completion_tokens"],
        ref["total_tokens"],
    )
    assert len({c.id for c in chunks}) == 1


def test_chat_completion_content_parts(client, chat_reference):
    parts = [
        {"role": "system", "content": [{"type": "text", "text": CHAT[0]["content"]}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is the capital "},
                {"type": "text", "text": "of France?"},
            ],
        },
    ]
    out = client.chat_completion(parts, max_tokens=MAX_NEW_TOKENS, temperature=0)
    # Parts are joined as TGI joins them, so this is the same conversation.
    assert out.choices[0].message.content == chat_reference["choices"][0]["message"]["content"]
    assert out.usage.prompt_tokens == chat_reference["usage"]["prompt_tokens"]


def test_wrong_token_raises_http_401(url):
    from huggingface_hub.errors import HfHubHTTPError

    bad = InferenceClient(model=url, token="not-the-key", timeout=60)
    with pytest.raises(Exception) as e:
        bad.text_generation(PROMPT, max_new_tokens=2)
    # huggingface_hub raises a TGI-style error parsed from the JSON body, caused by the
    # HTTP error itself.
    chain = [e.value, e.value.__cause__]
    http = [x for x in chain if isinstance(x, HfHubHTTPError)]
    assert http and http[0].response.status_code == 401, chain
    with pytest.raises(Exception) as e:
        bad.chat_completion(CHAT, max_tokens=2)
    chain = [e.value, e.value.__cause__]
    http = [x for x in chain if isinstance(x, HfHubHTTPError)]
    assert http and http[0].response.status_code == 401, chain


def test_text_generation_with_a_grammar(client):
    r = client.text_generation(
        PERSON_PROMPT,
        max_new_tokens=STRUCTURED_TOKENS,
        grammar={"type": "json", "value": PERSON_SCHEMA},
        return_full_text=False,
        details=True,
    )
    assert r.details.finish_reason == "eos_token", r.details
    check_person(json.loads(r.generated_text))


def test_chat_completion_with_tools(client):
    r = client.chat_completion(
        WEATHER_CHAT, tools=TOOLS, tool_choice="required", max_tokens=60, temperature=0,
        extra_body={"parallel_tool_calls": False},
    )
    c = r.choices[0]
    assert c.finish_reason == "tool_calls", c
    assert c.message.content is None
    calls = c.message.tool_calls
    assert calls and len(calls) == 1, c.message
    assert calls[0].id and calls[0].type == "function"
    check_tool_arguments(calls[0].function.name, calls[0].function.arguments)
    # A named function in TGI's form.
    r = client.chat_completion(
        [{"role": "user", "content": "What is 2 plus 3?"}], tools=TOOLS,
        tool_choice={"function": {"name": "add"}}, max_tokens=60, temperature=0,
    )
    calls = r.choices[0].message.tool_calls
    assert calls and all(t.function.name == "add" for t in calls), r.choices[0].message
    for t in calls:
        check_tool_arguments(t.function.name, t.function.arguments)
