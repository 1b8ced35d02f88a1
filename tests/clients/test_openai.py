"""The openai SDK with base_url=<server>/v1: chat completions and completions, streaming
and not, usage, logprobs, n, stop, models.list, errors, structured output
(`chat.completions.parse` with a Pydantic model) and tool calls (required, named,
streamed, a tool result sent back)."""

import json
import math
from typing import Literal

import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel, ConfigDict, Field

from conftest import (
    CHAT,
    MAX_NEW_TOKENS,
    PERSON_PROMPT,
    PROMPT,
    STRUCTURED_TOKENS,
    TOOLS,
    WEATHER_CHAT,
    check_person,
    check_tool_arguments,
)


@pytest.fixture(scope="module")
def client(url, api_key):
    return OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model(client):
    models = client.models.list().data
    assert len(models) == 1
    return models[0].id


@pytest.fixture(scope="module")
def chat_ref(client, model):
    r = client.chat.completions.create(model=model, messages=CHAT, max_tokens=MAX_NEW_TOKENS, temperature=0)
    assert r.choices[0].message.content
    return r


def check_usage(u, max_completion=MAX_NEW_TOKENS):
    assert u.prompt_tokens > 0
    assert 0 < u.completion_tokens <= max_completion
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def assert_token_count(completion_tokens, choices):
    """completion_tokens against the choices' logprobs: one entry per visible token; a
    choice that ended on the end-of-sequence token may count that token too (TGI does)."""
    visible = sum(len(c.logprobs.content) for c in choices)
    ended_on_eos = sum(c.finish_reason == "stop" for c in choices)
    assert visible <= completion_tokens <= visible + ended_on_eos, (completion_tokens, visible, ended_on_eos)


def test_models_list(client, model):
    m = client.models.list().data[0]
    assert m.object == "model" and m.id == model and m.owned_by and m.created > 0


def test_chat_completion(chat_ref):
    r = chat_ref
    assert r.object == "chat.completion"
    assert r.id and r.created > 0 and r.model
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0 and c.message.role == "assistant"
    assert c.finish_reason in ("stop", "length")
    check_usage(r.usage)
    if c.finish_reason == "length":
        assert r.usage.completion_tokens == MAX_NEW_TOKENS


def test_any_model_name_is_accepted(client, chat_ref):
    r = client.chat.completions.create(model="tgi", messages=CHAT, max_tokens=MAX_NEW_TOKENS, temperature=0)
    assert r.choices[0].message.content == chat_ref.choices[0].message.content


def test_max_completion_tokens(client, model):
    r = client.chat.completions.create(model=model, messages=CHAT, max_completion_tokens=3, temperature=0)
    assert r.usage.completion_tokens <= 3
    if r.choices[0].finish_reason == "length":
        assert r.usage.completion_tokens == 3


def test_chat_stream_with_usage(client, model, chat_ref):
    stream = client.chat.completions.create(
        model=model,
        messages=CHAT,
        max_tokens=MAX_NEW_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    content_chunks = [c for c in chunks if c.choices]
    assert content_chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    assert text == chat_ref.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in content_chunks if c.choices[0].finish_reason]
    assert finishes == [chat_ref.choices[0].finish_reason]
    # include_usage: one last chunk with no choices and the usage; the others have none.
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    u, ref = chunks[-1].usage, chat_ref.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (
        ref.prompt_tokens,
        ref.completion_tokens,
        ref.total_tokens,
    )


def test_chat_stream_without_usage(client, model, chat_ref):
    chunks = list(
        client.chat.completions.create(
            model=model, messages=CHAT, max_tokens=MAX_NEW_TOKENS, temperature=0, stream=True
        )
    )
    assert all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == chat_ref.choices[0].message.content


@pytest.fixture(scope="module")
def logprobs_ref(client, model):
    return client.chat.completions.create(
        model=model, messages=CHAT, max_tokens=MAX_NEW_TOKENS, temperature=0, logprobs=True, top_logprobs=3
    )


def test_chat_logprobs(logprobs_ref, chat_ref):
    r = logprobs_ref
    c = r.choices[0]
    assert c.message.content == chat_ref.choices[0].message.content
    content = c.logprobs.content
    assert_token_count(r.usage.completion_tokens, [c])
    for lp in content:
        assert lp.logprob <= 0
        assert len(lp.top_logprobs) == 3
        tops = [t.logprob for t in lp.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert lp.top_logprobs[0].token == lp.token
        assert math.isclose(lp.top_logprobs[0].logprob, lp.logprob, abs_tol=1e-3)
    assert "".join(lp.token for lp in content) == c.message.content


def test_chat_stream_logprobs(client, model, chat_ref, logprobs_ref):
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=CHAT,
            max_tokens=MAX_NEW_TOKENS,
            temperature=0,
            logprobs=True,
            top_logprobs=2,
            stream=True,
        )
    )
    lps = [lp for c in chunks if c.choices and c.choices[0].logprobs for lp in c.choices[0].logprobs.content]
    assert [lp.token for lp in lps] == [lp.token for lp in logprobs_ref.choices[0].logprobs.content]
    assert "".join(lp.token for lp in lps) == chat_ref.choices[0].message.content
    assert all(len(lp.top_logprobs) == 2 for lp in lps)


def test_chat_n_2(client, model):
    r = client.chat.completions.create(
        model=model,
        messages=CHAT,
        max_tokens=MAX_NEW_TOKENS,
        temperature=0.9,
        seed=11,
        n=2,
        logprobs=True,
    )
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert all(c.message.content for c in r.choices)
    # Usage counts the prompt once and the tokens of every choice.
    assert_token_count(r.usage.completion_tokens, r.choices)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_n_2_stream(client, model):
    chunks = list(
        client.chat.completions.create(
            model=model, messages=CHAT, max_tokens=6, temperature=0.9, seed=5, n=2, stream=True
        )
    )
    by_index = {}
    for c in chunks:
        for ch in c.choices:
            by_index.setdefault(ch.index, []).append(ch)
    assert sorted(by_index) == [0, 1]
    for deltas in by_index.values():
        assert "".join(d.delta.content or "" for d in deltas)
        assert [d.finish_reason for d in deltas if d.finish_reason][-1] in ("stop", "length")


def test_chat_stop(client, model, chat_ref):
    full = chat_ref.choices[0].message.content
    words = full.split()
    assert len(words) >= 2, full
    stop = words[1]
    r = client.chat.completions.create(model=model, messages=CHAT, max_tokens=MAX_NEW_TOKENS, temperature=0, stop=[stop])
    c = r.choices[0]
    assert c.finish_reason == "stop"
    # OpenAI leaves the stop sequence out of the text.
    assert c.message.content == full[: full.index(stop)]


def test_chat_seeded_sampling_is_reproducible(client, model):
    kw = dict(model=model, messages=CHAT, max_tokens=MAX_NEW_TOKENS, temperature=1.0, top_p=0.95, seed=99)
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    assert a and a == b


def test_completions(client, model, greedy):
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=MAX_NEW_TOKENS, temperature=0)
    assert r.object == "text_completion"
    c = r.choices[0]
    # The same prompt text as /generate's inputs, so the same greedy continuation.
    assert c.text == greedy["generated_text"]
    assert c.finish_reason in ("stop", "length")
    check_usage(r.usage)
    assert r.usage.completion_tokens == greedy["details"]["generated_tokens"]


def test_completions_stream(client, model, greedy):
    chunks = list(
        client.completions.create(
            model=model,
            prompt=PROMPT,
            max_tokens=MAX_NEW_TOKENS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == greedy["generated_text"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == greedy["details"]["generated_tokens"]


def test_completions_logprobs(client, model, greedy):
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=MAX_NEW_TOKENS, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    n = greedy["details"]["generated_tokens"]
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert "".join(lp.tokens) == r.choices[0].text
    for tok, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0
        assert len(top) == 2
        assert max(top, key=top.get) == tok


def test_completions_list_of_prompts(client, model, greedy):
    r = client.completions.create(
        model=model, prompt=[PROMPT, "The capital of France is"], max_tokens=MAX_NEW_TOKENS, temperature=0
    )
    assert sorted(c.index for c in r.choices) == [0, 1]
    by_index = {c.index: c.text for c in r.choices}
    assert by_index[0] == greedy["generated_text"]
    assert by_index[1]


def test_bad_request_is_a_4xx_with_message(client, model):
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model=model, messages=CHAT, max_tokens=4, temperature=-1)
    assert 400 <= e.value.status_code < 500
    assert isinstance(e.value.body, dict) and e.value.body.get("message"), e.value.body
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model=model, messages=[], max_tokens=4)
    assert 400 <= e.value.status_code < 500


def test_wrong_key_is_authentication_error(url):
    bad = OpenAI(base_url=url + "/v1", api_key="not-the-key", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="tgi", messages=CHAT, max_tokens=2)


# Structured output and tools.


class Person(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=120)
    role: Literal["admin", "user", "guest"]


def test_parse_with_a_pydantic_model(client, model):
    r = client.chat.completions.parse(
        model=model,
        messages=[{"role": "user", "content": PERSON_PROMPT}],
        response_format=Person,
        max_tokens=STRUCTURED_TOKENS,
        temperature=0,
    )
    c = r.choices[0]
    assert c.finish_reason == "stop", c
    assert isinstance(c.message.parsed, Person), c.message
    check_person(json.loads(c.message.content))


def test_json_schema_stream(client, model):
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PERSON_PROMPT}],
        response_format={"type": "json_schema", "json_schema": {"name": "Person", "schema": Person.model_json_schema()}},
        max_tokens=STRUCTURED_TOKENS,
        temperature=0,
        stream=True,
    )
    text, reason = "", None
    for chunk in stream:
        for c in chunk.choices:
            text += c.delta.content or ""
            reason = c.finish_reason or reason
    assert reason == "stop"
    check_person(json.loads(text))


def single_call(message):
    assert message.content is None, message
    assert message.tool_calls and len(message.tool_calls) == 1, message
    call = message.tool_calls[0]
    assert call.type == "function" and call.id
    check_tool_arguments(call.function.name, call.function.arguments)
    return call


def test_tool_choice_required(client, model):
    r = client.chat.completions.create(
        model=model, messages=WEATHER_CHAT, tools=TOOLS, tool_choice="required",
        parallel_tool_calls=False, max_tokens=60, temperature=0,
    )
    assert r.choices[0].finish_reason == "tool_calls"
    single_call(r.choices[0].message)


def test_tool_choice_named(client, model):
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is 2 plus 3?"}], tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "add"}},
        parallel_tool_calls=False, max_tokens=60, temperature=0,
    )
    assert r.choices[0].finish_reason == "tool_calls"
    assert single_call(r.choices[0].message).function.name == "add"


def test_streamed_tool_calls(client, model):
    stream = client.chat.completions.create(
        model=model, messages=WEATHER_CHAT, tools=TOOLS, tool_choice="required",
        parallel_tool_calls=False, max_tokens=60, temperature=0, stream=True,
    )
    calls, content, reason = {}, "", None
    for chunk in stream:
        for c in chunk.choices:
            content += c.delta.content or ""
            reason = c.finish_reason or reason
            for t in c.delta.tool_calls or []:
                if t.index not in calls:
                    # The first fragment of a call names it.
                    assert t.id and t.type == "function" and t.function.name, t
                    calls[t.index] = {"id": t.id, "name": t.function.name, "arguments": ""}
                else:
                    assert t.id is None and t.function.name is None, t
                calls[t.index]["arguments"] += t.function.arguments or ""
    assert content == ""
    assert reason == "tool_calls"
    assert list(calls) == [0]
    check_tool_arguments(calls[0]["name"], calls[0]["arguments"])


def test_tool_result_round_trip(client, model):
    first = client.chat.completions.create(
        model=model, messages=WEATHER_CHAT, tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False, max_tokens=60, temperature=0,
    )
    call = single_call(first.choices[0].message)
    messages = WEATHER_CHAT + [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21})},
    ]
    r = client.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, tool_choice="none", max_tokens=12, temperature=0,
    )
    c = r.choices[0]
    assert c.message.content and not c.message.tool_calls, c.message
    assert c.finish_reason in ("stop", "length")


def test_bad_tools_are_422(client, model):
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(
            model=model, messages=WEATHER_CHAT, tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "unknown"}}, max_tokens=4,
        )
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(
            model=model, messages=WEATHER_CHAT, max_tokens=4,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "format": "no-such-format"}}},
        )
