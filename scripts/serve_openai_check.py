#!/usr/bin/env python3
"""Drives a running `vibrant serve` with the official `openai` client: chat and completions,
whole and streamed, greedy, checking that both ways give the same text and usage counts.

    python3 scripts/serve_openai_check.py http://127.0.0.1:8080/v1 smollm2-135m
    python3 scripts/serve_openai_check.py http://127.0.0.1:8080/v1 qwen2.5-coder-0.5b --tools
"""
import json
import sys

try:
    import openai
except ImportError:
    sys.exit("the openai package is missing: pip install openai")


def main(base_url, model):
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list()] == [model]

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    whole = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=10)
    text = whole.choices[0].message.content
    assert whole.choices[0].finish_reason == "length", whole
    assert whole.usage.completion_tokens == 10 and whole.usage.prompt_tokens > 0, whole.usage
    chunks = list(client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=10, stream=True,
        stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text, (streamed, text)
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens, chunks[-1]

    done = client.completions.create(model=model, prompt="The capital of France is", temperature=0, max_tokens=6)
    parts = client.completions.create(model=model, prompt="The capital of France is", temperature=0,
                                      max_tokens=6, stream=True)
    assert "".join(p.choices[0].text for p in parts) == done.choices[0].text
    assert done.usage.completion_tokens == 6, done.usage

    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    person = client.chat.completions.create(
        model=model, temperature=0, max_tokens=60,
        messages=[{"role": "user", "content": "Give the name and age of Ann, who is 30, as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    value = json.loads(person.choices[0].message.content)
    assert isinstance(value["name"], str) and isinstance(value["age"], int), value

    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        raise AssertionError("an unknown model was answered")
    except openai.NotFoundError as e:
        assert e.body["code"] == "model_not_found", e.body
    print("openai client: chat and completions, whole and streamed, JSON schema output: ok")


WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def tools(base_url, model):
    """A model whose template calls tools: the client reads the calls, whole and streamed."""
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "What is the weather like in Paris today?"}]
    for choice in [None, "required"]:
        extra = {"tool_choice": choice} if choice else {}
        whole = client.chat.completions.create(model=model, messages=messages, tools=WEATHER,
                                               temperature=0, max_tokens=60, **extra)
        call = whole.choices[0].message.tool_calls[0]
        assert whole.choices[0].finish_reason == "tool_calls", whole
        assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"], call
        chunks = list(client.chat.completions.create(model=model, messages=messages, tools=WEATHER,
                                                     temperature=0, max_tokens=60, stream=True, **extra))
        streamed = [t for c in chunks if c.choices for t in (c.choices[0].delta.tool_calls or [])]
        assert streamed[0].function.arguments == call.function.arguments, (streamed, call)
    print("openai client: tool calls, whole and streamed, auto and required: ok")


if __name__ == "__main__":
    if sys.argv[3:] == ["--tools"]:
        tools(sys.argv[1], sys.argv[2])
    else:
        main(sys.argv[1], sys.argv[2])
