"""TGI's own Python client (`text-generation`): Client.generate / generate_stream (with a
JSON or regex `Grammar` too), which
post to `/` with every parameter (nulls included) and details=True."""

import json
import math

import pytest
from text_generation import Client
from text_generation.errors import UnknownError, ValidationError
from text_generation.types import FinishReason, Grammar, GrammarType, Message

from conftest import MAX_NEW_TOKENS, PERSON_PROMPT, PERSON_SCHEMA, PROMPT, STRUCTURED_TOKENS, check_person


@pytest.fixture(scope="module")
def client(url, api_key):
    return Client(url, headers={"Authorization": f"Bearer {api_key}"}, timeout=120)


def visible_text(tokens):
    return "".join(t.text for t in tokens if not t.special)


def stop_string(text):
    """A stop sequence that greedy decoding of PROMPT meets after its first few characters."""
    words = [w for w in text.split() if len(w) >= 2]
    assert words, f"no word to stop on in {text!r}"
    # The second word when there is one, so that generation stops mid-way.
    word = words[1] if len(words) > 1 else words[0]
    return word


def test_generate_greedy(client, greedy):
    r = client.generate(PROMPT, max_new_tokens=MAX_NEW_TOKENS)
    assert r.generated_text == greedy["generated_text"]
    d = r.details
    assert d.finish_reason in (FinishReason.Length, FinishReason.EndOfSequenceToken)
    assert d.generated_tokens == len(d.tokens)
    if d.finish_reason == FinishReason.Length:
        assert d.generated_tokens == MAX_NEW_TOKENS
    assert visible_text(d.tokens) == r.generated_text
    assert d.seed is None
    assert d.prefill == []


def test_generate_decoder_input_details(client):
    r = client.generate(PROMPT, max_new_tokens=4, decoder_input_details=True)
    prefill = r.details.prefill
    assert len(prefill) >= 5
    assert prefill[0].logprob is None
    assert all(p.logprob is not None and p.logprob <= 0 for p in prefill[1:])
    # The prompt's own tokens, in order: their texts spell the prompt.
    assert PROMPT.strip() in "".join(p.text for p in prefill)


def test_generate_top_n_tokens(client, greedy):
    r = client.generate(PROMPT, max_new_tokens=MAX_NEW_TOKENS, top_n_tokens=3)
    d = r.details
    assert r.generated_text == greedy["generated_text"]
    assert d.top_tokens is not None and len(d.top_tokens) == d.generated_tokens
    for chosen, top in zip(d.tokens, d.top_tokens):
        assert len(top) == 3
        logprobs = [t.logprob for t in top]
        assert logprobs == sorted(logprobs, reverse=True)
        # Greedy picks the most likely token.
        assert top[0].id == chosen.id
        assert math.isclose(top[0].logprob, chosen.logprob, abs_tol=1e-3)


def test_generate_seeded_sampling_is_reproducible(client):
    kw = dict(max_new_tokens=MAX_NEW_TOKENS, do_sample=True, temperature=0.9, top_k=40, seed=1234)
    a = client.generate(PROMPT, **kw)
    b = client.generate(PROMPT, **kw)
    assert a.generated_text and a.generated_text == b.generated_text
    assert a.details.seed == 1234


def test_generate_stream_matches_generate(client, greedy):
    responses = list(client.generate_stream(PROMPT, max_new_tokens=MAX_NEW_TOKENS))
    assert responses
    *head, last = responses
    assert all(r.details is None and r.generated_text is None for r in head)
    text = visible_text([r.token for r in responses])
    assert text == greedy["generated_text"]
    assert last.generated_text == text
    assert last.details.finish_reason.value == greedy["details"]["finish_reason"]
    assert last.details.generated_tokens == len(responses)


def test_generate_stream_top_n_tokens(client):
    responses = list(client.generate_stream(PROMPT, max_new_tokens=6, top_n_tokens=2))
    assert responses
    for r in responses:
        assert r.top_tokens is not None and len(r.top_tokens) == 2
        assert r.top_tokens[0].id == r.token.id


def test_stop_sequences(client, greedy):
    full = greedy["generated_text"]
    stop = stop_string(full)
    cut = full[: full.index(stop) + len(stop)]

    r = client.generate(PROMPT, max_new_tokens=MAX_NEW_TOKENS, stop_sequences=[stop])
    assert r.details.finish_reason == FinishReason.StopSequence
    # TGI keeps the stop sequence in the text.
    assert r.generated_text == cut
    assert r.details.generated_tokens < greedy["details"]["generated_tokens"]

    responses = list(client.generate_stream(PROMPT, max_new_tokens=MAX_NEW_TOKENS, stop_sequences=[stop]))
    assert responses[-1].details.finish_reason == FinishReason.StopSequence
    assert responses[-1].generated_text == cut
    assert visible_text([x.token for x in responses]) == cut


def test_server_side_validation_error(client):
    # The client checks value ranges itself; the number of stop sequences is the
    # server's to check (max_stop_sequences).
    with pytest.raises(ValidationError):
        client.generate(PROMPT, max_new_tokens=4, stop_sequences=[str(i) for i in range(50)])
    with pytest.raises(ValidationError):
        list(client.generate_stream(PROMPT, max_new_tokens=4, stop_sequences=[str(i) for i in range(50)]))


def test_wrong_token_is_an_error_not_a_crash(url):
    bad = Client(url, headers={"Authorization": "Bearer not-the-key"}, timeout=60)
    # 401 with a JSON {"error": ...}: the client raises its UnknownError (a body without
    # "error" would make it fail with a KeyError instead).
    with pytest.raises(UnknownError):
        bad.generate(PROMPT, max_new_tokens=2)
    with pytest.raises(UnknownError):
        list(bad.generate_stream(PROMPT, max_new_tokens=2))


def test_client_chat(client, raw):
    want = raw.chat(
        [{"role": "user", "content": "What is the capital of France?"}], max_tokens=MAX_NEW_TOKENS, temperature=0
    )
    r = client.chat(
        messages=[Message(role="user", content="What is the capital of France?")],
        max_tokens=MAX_NEW_TOKENS,
        temperature=0,
    )
    assert r.choices[0].message.content == want["choices"][0]["message"]["content"]
    assert r.choices[0].finish_reason in ("length", "stop")
    assert r.usage["total_tokens"] == r.usage["prompt_tokens"] + r.usage["completion_tokens"]


def test_json_grammar(client):
    r = client.generate(
        PERSON_PROMPT,
        max_new_tokens=STRUCTURED_TOKENS,
        grammar=Grammar(type=GrammarType.Json, value=PERSON_SCHEMA),
    )
    assert r.details.finish_reason == FinishReason.EndOfSequenceToken, r.details
    check_person(json.loads(r.generated_text))


def test_regex_grammar_stream(client):
    tokens = list(
        client.generate_stream(
            "Pick a number:", max_new_tokens=12, grammar=Grammar(type=GrammarType.Regex, value="[0-9]{3}")
        )
    )
    last = tokens[-1]
    assert last.details.finish_reason == FinishReason.EndOfSequenceToken
    text = last.generated_text
    assert len(text) == 3 and text.isdigit(), text


def test_bad_grammar_is_a_validation_error(client):
    with pytest.raises(ValidationError):
        client.generate("x", max_new_tokens=2, grammar=Grammar(type=GrammarType.Regex, value="(unclosed"))
