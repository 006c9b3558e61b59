"""Reading the usage of OpenAI and Anthropic responses: SDK objects, dicts, usages alone.

The reference is genai-prices' own usage extractors: the cost of a response read here
must be the cost genai-prices computes from the same response.
"""

from __future__ import annotations

from types import MappingProxyType, SimpleNamespace
from typing import Any

import pytest

genai_prices = pytest.importorskip("genai_prices")

from rate_limited.cost import TokenUsage, cost, read_usage  # noqa: E402


# -- usage from responses -------------------------------------------------------------------------
def openai_chat() -> Any:
    from openai.types.chat import ChatCompletion, ChatCompletionMessage
    from openai.types.chat.chat_completion import Choice
    from openai.types.completion_usage import (
        CompletionTokensDetails,
        CompletionUsage,
        PromptTokensDetails,
    )

    return ChatCompletion(
        id="chatcmpl-1",
        choices=[
            Choice(
                finish_reason="stop",
                index=0,
                message=ChatCompletionMessage(role="assistant", content="42"),
            )
        ],
        created=0,
        model="gpt-4o-mini-2024-07-18",
        object="chat.completion",
        usage=CompletionUsage(
            prompt_tokens=3_000,
            completion_tokens=500,
            total_tokens=3_500,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=2_048),
            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=300),
        ),
    )


def openai_response() -> Any:
    from openai.types.responses import Response, ResponseUsage
    from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

    return Response(
        id="resp_1",
        created_at=0,
        model="gpt-6-sol",
        object="response",
        output=[],
        parallel_tool_calls=False,
        tool_choice="auto",
        tools=[],
        usage=ResponseUsage(
            input_tokens=8_000,
            input_tokens_details=InputTokensDetails(cached_tokens=6_000, cache_write_tokens=500),
            output_tokens=1_200,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=1_000),
            total_tokens=9_200,
        ),
    )


def openai_embeddings() -> Any:
    from openai.types import CreateEmbeddingResponse, Embedding
    from openai.types.create_embedding_response import Usage

    return CreateEmbeddingResponse(
        data=[Embedding(embedding=[0.1, 0.2], index=0, object="embedding")],
        model="text-embedding-3-small",
        object="list",
        usage=Usage(prompt_tokens=700, total_tokens=700),
    )


def anthropic_message() -> Any:
    from anthropic.types import CacheCreation, Message, TextBlock, Usage

    return Message(
        id="msg_1",
        content=[TextBlock(type="text", text="42")],
        model="claude-haiku-4-5",
        role="assistant",
        stop_reason="end_turn",
        stop_sequence=None,
        type="message",
        usage=Usage(
            input_tokens=50,
            output_tokens=400,
            cache_creation_input_tokens=3_000,
            cache_read_input_tokens=10_000,
            cache_creation=CacheCreation(
                ephemeral_1h_input_tokens=1_000, ephemeral_5m_input_tokens=2_000
            ),
        ),
    )


RESPONSES = [
    pytest.param(openai_chat, "openai", "chat", id="openai-chat"),
    pytest.param(openai_response, "openai", "responses", id="openai-responses"),
    pytest.param(openai_embeddings, "openai", "embeddings", id="openai-embeddings"),
    pytest.param(anthropic_message, "anthropic", "default", id="anthropic-messages"),
]


@pytest.mark.parametrize(("make", "provider_id", "flavor"), RESPONSES)
@pytest.mark.parametrize("form", ["sdk", "dict", "usage-only"])
def test_cost_of_a_response_is_genai_prices_extracted_cost(
    make: Any, provider_id: str, flavor: str, form: str
) -> None:
    pytest.importorskip(provider_id)
    response = make()
    dumped = response.model_dump()
    extracted = genai_prices.extract_usage(dumped, provider_id=provider_id, api_flavor=flavor)
    expected = float(extracted.calc_price().total_price)
    assert expected > 0
    if form == "sdk":
        assert cost(response) == pytest.approx(expected, rel=1e-12)
    elif form == "dict":
        assert cost(dumped) == pytest.approx(expected, rel=1e-12)
    else:
        assert cost(response.usage, response.model) == pytest.approx(expected, rel=1e-12)
        assert cost(dumped["usage"], response.model) == pytest.approx(expected, rel=1e-12)


def test_read_usage_of_each_shape() -> None:
    pytest.importorskip("openai")
    pytest.importorskip("anthropic")
    assert read_usage(openai_chat()) == TokenUsage(3_000, 500, cached_input_tokens=2_048)
    assert read_usage(openai_response()) == TokenUsage(
        8_000, 1_200, cached_input_tokens=6_000, cache_write_tokens=500
    )
    assert read_usage(openai_embeddings()) == TokenUsage(700, 0)
    assert read_usage(anthropic_message()) == TokenUsage(
        13_050,
        400,
        cached_input_tokens=10_000,
        cache_write_tokens=3_000,
        cache_write_1h_tokens=1_000,
    )


@pytest.mark.parametrize(
    ("response", "match"),
    [
        pytest.param({"choices": []}, "no token usage", id="no-usage"),
        pytest.param({"usage": None, "model": "gpt-4o"}, "no token usage", id="usage-none"),
        pytest.param({"prompt_tokens": "12"}, "prompt_tokens", id="not-a-count"),
        pytest.param({"prompt_tokens": -3}, "input_tokens", id="negative"),
        pytest.param(
            {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 20}},
            "exceed",
            id="more-cached-than-prompt",
        ),
    ],
)
def test_usage_that_makes_no_sense_is_refused(response: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        read_usage(response)


def test_a_usage_alone_needs_the_model() -> None:
    with pytest.raises(ValueError, match="model="):
        cost({"prompt_tokens": 10, "completion_tokens": 1})


def test_fields_an_older_sdk_lacks_are_read_from_its_extras() -> None:
    pydantic = pytest.importorskip("pydantic")

    class OldUsage(pydantic.BaseModel):  # an SDK type from before completion_tokens existed
        model_config = pydantic.ConfigDict(extra="allow")
        prompt_tokens: int

    old = OldUsage.model_validate({"prompt_tokens": 10, "completion_tokens": 3})
    assert read_usage(old) == TokenUsage(10, 3)


@pytest.mark.parametrize(
    "usage",
    [
        pytest.param(MappingProxyType({"input_tokens": 7, "output_tokens": 2}), id="mapping"),
        pytest.param(SimpleNamespace(input_tokens=7, output_tokens=2), id="plain-object"),
    ],
)
def test_any_mapping_or_object_is_read(usage: Any) -> None:
    assert read_usage(usage) == TokenUsage(7, 2)
