"""LangChain's ChatOpenAI pointed at the server's `/v1`: `with_structured_output` (the
json_schema method, a Pydantic model) and `bind_tools` with a named and a required
tool_choice."""

from typing import Literal

import pytest
from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, ConfigDict, Field

from conftest import PERSON_PROMPT, STRUCTURED_TOKENS, WEATHER_CHAT, check_person, check_tool_arguments


class Person(BaseModel):
    """A user of a web site."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=120)
    role: Literal["admin", "user", "guest"]


class get_weather(BaseModel):  # noqa: N801 (a tool's name, as LangChain takes it)
    """The current weather in a city."""

    model_config = ConfigDict(extra="forbid")
    city: str = Field(max_length=12)
    unit: Literal["celsius", "fahrenheit"]


class add(BaseModel):  # noqa: N801
    """Adds two integers."""

    model_config = ConfigDict(extra="forbid")
    a: int = Field(ge=0, le=1000)
    b: int = Field(ge=0, le=1000)


@pytest.fixture(scope="module")
def llm(url, api_key):
    return ChatOpenAI(
        base_url=url + "/v1", api_key=api_key, model="tgi", temperature=0,
        max_tokens=STRUCTURED_TOKENS, max_retries=0, timeout=120,
    )


def test_with_structured_output(llm):
    structured = llm.with_structured_output(Person, method="json_schema", include_raw=True)
    out = structured.invoke(PERSON_PROMPT)
    assert out["parsing_error"] is None, out
    person = out["parsed"]
    assert isinstance(person, Person), out
    check_person(person.model_dump())


def check_calls(message, names):
    assert isinstance(message, AIMessage)
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call["name"] in names and call["id"], call
        check_tool_arguments(call["name"], call["args"])
    return message.tool_calls


def test_bind_tools_named(llm):
    model = llm.bind_tools([get_weather, add], tool_choice="add", parallel_tool_calls=False)
    calls = check_calls(model.invoke("What is 2 plus 3?"), {"add"})
    assert len(calls) == 1


def test_bind_tools_required_stream(llm):
    model = llm.bind_tools([get_weather, add], tool_choice="required", parallel_tool_calls=False)
    message = None
    for chunk in model.stream(WEATHER_CHAT[0]["content"]):
        message = chunk if message is None else message + chunk
    assert not message.content, message
    assert len(check_calls(message, {"get_weather", "add"})) == 1
