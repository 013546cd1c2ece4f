"""A token endpoint that echoes the request in its error text never leaks the secret."""

from __future__ import annotations

import json

import httpx
import pytest

from tokenflight import ClientCredentials, RefreshError, TokenCache

SECRET = "s3b+p@ss+w/rd=1&x"


def echoing_transport() -> httpx.MockTransport:
    """A token endpoint that rejects the client and quotes its whole request back."""

    def handler(request: httpx.Request) -> httpx.Response:
        echoed = (
            f"bad secret {request.headers.get('authorization')} body {request.content.decode()}"
        )
        body = {"error": "invalid_client", "error_description": echoed}
        return httpx.Response(
            401, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )

    return httpx.MockTransport(handler)


@pytest.mark.anyio
@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
async def test_echoed_request_redacted(auth_method: str) -> None:
    async with httpx.AsyncClient(transport=echoing_transport()) as http_client:
        source = ClientCredentials(
            "https://login.example.test/token",
            "svc",
            client_secret=SECRET,
            auth_method=auth_method,  # type: ignore[arg-type]
            http_client=http_client,
        )
        with pytest.raises(RefreshError) as caught:
            await TokenCache(source).get()

    chain: list[BaseException] = []
    error: BaseException | None = caught.value
    while error is not None:
        chain.append(error)
        error = error.__cause__
    text = " ".join(str(link) for link in chain)
    assert "invalid_client" in text
    assert "***" in text
    assert SECRET not in text
    for encoded in ("s3b%2Bp%40ss%2Bw%2Frd%3D1%26x", "s3b%2bp%40ss%2bw%2frd%3d1%26x"):
        assert encoded.lower() not in text.lower()
    # The Basic credentials, base64 of "svc:<form-encoded secret>", are redacted too.
    assert "c3ZjOnMzYiUyQnAlNDBzcyUyQnclMkZyZCUzRDElMjZ4" not in text
