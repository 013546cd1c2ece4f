"""AuthClient as the httpx_client of a real Fern-generated SDK: cohere's AsyncClientV2.

A loopback server, served by hypercorn, records the headers of every request and responds
as the API would. Every SDK call, the streaming chat included, must carry our token
exactly once, and headers the caller adds through request_options must survive.

The SDK's own retry path sleeps with asyncio.sleep, which fails under trio, so the trio
runs pass max_retries=0; no request here fails, so no retry would happen anyway.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import cohere
import pytest
from cohere.core.request_options import RequestOptions

from secret_guard import SecretGuard
from tokenflight import AuthClient, Token
from tokenflight._demo._servers import Receive, Scope, Send, serve

TOKEN = "cohere-test-token-Rm3vXq8Ls"
SDK_KEY = "sdk-static-key-Wt6nJp2Yb"


@dataclass
class RecordingApi:
    """Serves /v2/chat (plain and streaming) and /v2/embed, and records each request."""

    requests: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"{message['type']}.complete"})
                if kind == "shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = [
            (bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in scope["headers"]
        ]
        self.requests.append((scope["path"], headers))
        payload = json.loads(body or b"{}")

        if scope["path"] == "/v2/chat" and payload.get("stream"):
            events: list[dict[str, Any]] = [
                {
                    "type": "message-start",
                    "id": "chat-2",
                    "delta": {"message": {"role": "assistant"}},
                },
                {
                    "type": "content-start",
                    "index": 0,
                    "delta": {"message": {"content": {"type": "text", "text": ""}}},
                },
                {
                    "type": "content-delta",
                    "index": 0,
                    "delta": {"message": {"content": {"text": "Hel"}}},
                },
                {
                    "type": "content-delta",
                    "index": 0,
                    "delta": {"message": {"content": {"text": "lo"}}},
                },
                {"type": "content-end", "index": 0},
                {"type": "message-end", "delta": {"finish_reason": "COMPLETE"}},
            ]
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            for event in events:
                chunk = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return

        answer: dict[str, Any]
        if scope["path"] == "/v2/chat":
            answer = {
                "id": "chat-1",
                "finish_reason": "COMPLETE",
                "message": {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
            }
        elif scope["path"] == "/v2/embed":
            answer = {
                "id": "embed-1",
                "response_type": "embeddings_by_type",
                "embeddings": {"float": [[0.25, 0.5, 0.75]]},
                "texts": payload.get("texts", []),
            }
        else:
            answer = {"message": "not found"}
        encoded = json.dumps(answer).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200 if scope["path"] in ("/v2/chat", "/v2/embed") else 404,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(encoded)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": encoded})

    def values(self, index: int, name: str) -> list[str]:
        return [value for key, value in self.requests[index][1] if key.lower() == name.lower()]


class CountingSource:
    def __init__(self) -> None:
        self.fetches = 0

    async def fetch(self) -> Token:
        self.fetches += 1
        return Token(TOKEN, expires_in=3600)


def max_retries(backend: str) -> int | None:
    """Return 0 under trio, where the SDK's retry sleep would fail; the SDK default otherwise."""
    return 0 if backend == "trio" else None


@pytest.mark.anyio
async def test_every_call_one_token(anyio_backend: str, secret_guard: SecretGuard) -> None:
    secret_guard.register(TOKEN, SDK_KEY)
    api, source = RecordingApi(), CountingSource()
    extra: RequestOptions = {"additional_headers": {"X-Request-Id": "req-42", "x-tenant": "acme"}}
    async with (
        serve([api], backend=anyio_backend) as urls,
        AuthClient(source, base_url=urls[0], replace_existing=True) as http,
    ):
        client = cohere.AsyncClientV2(
            api_key=SDK_KEY,
            base_url=urls[0],
            httpx_client=http,
            max_retries=max_retries(anyio_backend),
        )
        messages: Any = [{"role": "user", "content": "Say hello"}]
        chat = await client.chat(
            model="command-a-03-2025", messages=messages, request_options=extra
        )
        streamed: list[Any] = [
            event
            async for event in client.chat_stream(
                model="command-a-03-2025", messages=messages, request_options=extra
            )
        ]
        embedded = await client.embed(
            model="embed-v4.0",
            texts=["hello"],
            input_type="search_document",
            embedding_types=["float"],
            request_options=extra,
        )

    assert chat.message.content is not None
    assert chat.message.content[0].text == "Hello"  # type: ignore[union-attr]
    assert streamed[0].type == "message-start"
    assert streamed[-1].type == "message-end"
    deltas = [
        event.delta.message.content.text for event in streamed if event.type == "content-delta"
    ]
    assert deltas == ["Hel", "lo"]
    assert embedded.embeddings.float_ == [[0.25, 0.5, 0.75]]

    assert [path for path, _ in api.requests] == ["/v2/chat", "/v2/chat", "/v2/embed"]
    for index in range(len(api.requests)):
        assert api.values(index, "authorization") == [f"Bearer {TOKEN}"]
        assert api.values(index, "x-request-id") == ["req-42"]
        assert api.values(index, "x-tenant") == ["acme"]
        assert all(SDK_KEY not in value for _, value in api.requests[index][1])
    assert source.fetches == 1


@pytest.mark.anyio
async def test_sdk_key_kept_without_replace(anyio_backend: str) -> None:
    # The documented rule: an Authorization header already on the request wins unless
    # replace_existing=True, so an SDK that always sends its own key keeps it.
    api, source = RecordingApi(), CountingSource()
    async with (
        serve([api], backend=anyio_backend) as urls,
        AuthClient(source, base_url=urls[0]) as http,
    ):
        client = cohere.AsyncClientV2(
            api_key=SDK_KEY,
            base_url=urls[0],
            httpx_client=http,
            max_retries=max_retries(anyio_backend),
        )
        messages: Any = [{"role": "user", "content": "Say hello"}]
        await client.chat(model="command-a-03-2025", messages=messages)
    assert api.values(0, "authorization") == [f"Bearer {SDK_KEY}"]
    assert source.fetches == 0
