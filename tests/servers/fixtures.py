"""Session fixtures that run real authorization servers on 127.0.0.1.

* ``oidc_server``: oidc-provider (Node.js), a certified OpenID Connect server, with the
  clients below. Its dependencies come from ``npm ci --prefix tests/servers``; when node
  or they are missing, the fixture fails with that command rather than skipping.
* ``jwt_bearer_server``: an Authlib (Flask) server for the JWT-bearer grant, which
  oidc-provider does not implement.

Each server binds to a port the operating system picks, prints ``listening URL``, and
is polled until it responds, for at most :data:`START_TIMEOUT` seconds. Teardown
terminates it, and kills it if it does not exit within five seconds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from secret_guard import register_secret
from tokenflight import SigningKey, load_signing_key

SERVERS_DIR = Path(__file__).resolve().parent
START_TIMEOUT = 20.0
INSTALL_HINT = "npm ci --prefix tests/servers"

# Lifetimes, in seconds, of the test clients' access tokens: SHORT_TTL for the clients
# whose tests watch tokens expire, DEFAULT_TTL for the others.
DEFAULT_TTL = 300
SHORT_TTL = 5
REDIRECT_URI = "http://127.0.0.1/callback"


@dataclass(frozen=True)
class OidcClient:
    """A client registered with the test oidc-provider."""

    client_id: str
    client_secret: str | None = None
    private_key_pem: bytes | None = None
    algorithm: str | None = None
    kid: str | None = None
    ttl: int = DEFAULT_TTL

    def signing_key(self) -> SigningKey:
        """Load this client's private key for ``private_key_jwt``."""
        assert self.private_key_pem is not None
        assert self.algorithm is not None
        return load_signing_key(self.private_key_pem, algorithm=self.algorithm, kid=self.kid)


@dataclass(frozen=True)
class OidcServer:
    """A running oidc-provider and the clients registered with it."""

    issuer: str
    clients: dict[str, OidcClient] = field(default_factory=dict)

    @property
    def token_url(self) -> str:
        """The token endpoint."""
        return f"{self.issuer}/token"

    def client(self, client_id: str) -> OidcClient:
        """Return the registered client ``client_id``."""
        return self.clients[client_id]

    def token_requests(self, client_id: str | None = None) -> list[dict[str, Any]]:
        """Return the token requests the server has recorded, optionally for one client."""
        response = httpx.get(f"{self.issuer}/_test/token-requests", timeout=10)
        response.raise_for_status()
        records: list[dict[str, Any]] = response.json()
        if client_id is None:
            return records
        return [record for record in records if record["client_id"] == client_id]

    def first_refresh_token(self, client_id: str, *, scope: str = "openid offline_access") -> str:
        """Sign in through the development login and consent pages; return a refresh token."""
        client = self.clients[client_id]
        assert client.client_secret is not None
        return obtain_refresh_token(self.issuer, client.client_id, client.client_secret, scope)


@dataclass(frozen=True)
class JwtBearerServer:
    """A running Authlib server for the JWT-bearer grant, and its service account."""

    base_url: str
    issuer: str
    private_key_pem: bytes
    algorithm: str
    kid: str

    @property
    def token_url(self) -> str:
        """The token endpoint, also the audience assertions must name."""
        return f"{self.base_url}/token"

    def signing_key(self) -> SigningKey:
        """Load the service account's private key."""
        return load_signing_key(self.private_key_pem, algorithm=self.algorithm, kid=self.kid)

    def token_requests(self) -> list[dict[str, Any]]:
        """Return the token requests the server has recorded."""
        response = httpx.get(f"{self.base_url}/_test/token-requests", timeout=10)
        response.raise_for_status()
        records: list[dict[str, Any]] = response.json()
        return records


# -- keys --------------------------------------------------------------------------


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _new_rsa_pem() -> bytes:
    return _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def _new_ec_pem() -> bytes:
    return _pem(ec.generate_private_key(ec.SECP256R1()))


def _secret() -> str:
    return secrets.token_urlsafe(24)


# -- starting and stopping a server ---------------------------------------------


class _Process:
    """A server subprocess whose stdout announces its URL and whose stderr goes to a file."""

    def __init__(self, command: list[str], log_path: Path, env: dict[str, str] | None) -> None:
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=SERVERS_DIR,
            env=env,
        )
        self._lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)

    def wait_for_url(self, deadline: float) -> str:
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.1)
            except queue.Empty:
                if self.process.poll() is not None:
                    self._fail(f"exited with status {self.process.returncode} before listening")
                continue
            text = line.decode("utf-8", "replace").strip()
            if text.startswith("listening "):
                return text.split(" ", 1)[1]
        self._fail(f"did not print its URL within {START_TIMEOUT:g} s")
        raise AssertionError  # unreachable: _fail raises

    def wait_until_ready(self, url: str, deadline: float) -> None:
        last_error = "no attempt"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._fail(f"exited with status {self.process.returncode} while starting")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
                last_error = "not ready"
            except httpx.TransportError as error:
                last_error = type(error).__name__
            time.sleep(0.05)
        self._fail(f"did not answer {url} within {START_TIMEOUT:g} s ({last_error})")

    def _fail(self, problem: str) -> None:
        self.stop()
        log = self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        pytest.fail(f"test server {problem}; its stderr:\n{log}", pytrace=False)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


def _require_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node is not installed; the OAuth2 tests need Node.js 18+ to run oidc-provider. "
            f"Install Node.js, then run: {INSTALL_HINT}",
            pytrace=False,
        )
    if not (SERVERS_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.fail(
            f"oidc-provider is not installed in tests/servers/node_modules; run: {INSTALL_HINT}",
            pytrace=False,
        )
    return node


def _oidc_clients() -> dict[str, OidcClient]:
    clients = [
        OidcClient("cc-basic", client_secret=_secret()),
        OidcClient("cc-post", client_secret=_secret()),
        OidcClient("cc-short", client_secret=_secret(), ttl=SHORT_TTL),
        OidcClient("demo", client_secret=_secret(), ttl=SHORT_TTL),
        OidcClient("cc-rsa", private_key_pem=_new_rsa_pem(), algorithm="RS256", kid="rsa-1"),
        OidcClient("cc-ec", private_key_pem=_new_ec_pem(), algorithm="ES256", kid="ec-1"),
        OidcClient("rt-app", client_secret=_secret(), ttl=SHORT_TTL),
    ]
    return {client.client_id: client for client in clients}


def _client_metadata(client: OidcClient) -> dict[str, Any]:
    if client.client_id.startswith("rt-"):
        return {
            "client_id": client.client_id,
            "client_secret": client.client_secret,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "redirect_uris": [REDIRECT_URI],
            "scope": "openid offline_access read write",
            "token_endpoint_auth_method": "client_secret_basic",
        }
    metadata: dict[str, Any] = {
        "client_id": client.client_id,
        "grant_types": ["client_credentials"],
        "response_types": [],
        "redirect_uris": [],
        "scope": "read write",
    }
    if client.private_key_pem is not None:
        metadata["token_endpoint_auth_method"] = "private_key_jwt"
        metadata["token_endpoint_auth_signing_alg"] = client.algorithm
        metadata["jwks"] = {"keys": [client.signing_key().public_jwk()]}
    elif client.client_id == "cc-post":
        metadata["client_secret"] = client.client_secret
        metadata["token_endpoint_auth_method"] = "client_secret_post"
    else:
        metadata["client_secret"] = client.client_secret
        metadata["token_endpoint_auth_method"] = "client_secret_basic"
    return metadata


@pytest.fixture(scope="session")
def oidc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcServer]:
    """Run oidc-provider on 127.0.0.1 for the whole session."""
    node = _require_node()
    clients = _oidc_clients()
    for client in clients.values():
        if client.client_secret is not None:
            register_secret(client.client_secret, session=True)

    workdir = tmp_path_factory.mktemp("oidc-provider")
    config_path = workdir / "config.json"
    config = {
        "clients": [_client_metadata(client) for client in clients.values()],
        "accessTokenTtl": {client.client_id: client.ttl for client in clients.values()},
        "defaultAccessTokenTtl": DEFAULT_TTL,
    }
    config_path.write_text(json.dumps(config), encoding="utf-8")

    env = {**os.environ, "NODE_ENV": "test"}
    server = _Process([node, "oidc_provider.mjs", str(config_path)], workdir / "stderr.log", env)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        issuer = server.wait_for_url(deadline)
        server.wait_until_ready(f"{issuer}/.well-known/openid-configuration", deadline)
        yield OidcServer(issuer=issuer, clients=clients)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def jwt_bearer_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JwtBearerServer]:
    """Run the Authlib JWT-bearer server on 127.0.0.1 for the whole session."""
    private_key_pem = _new_ec_pem()
    issuer = "robot@tokenflight.test"
    key = load_signing_key(private_key_pem, algorithm="ES256", kid="robot-1")
    workdir = tmp_path_factory.mktemp("jwt-bearer-server")
    config_path = workdir / "config.json"
    config = {
        "clients": [{"issuer": issuer, "jwk": key.public_jwk(), "scope": "read write"}],
        "expires_in": 300,
    }
    config_path.write_text(json.dumps(config), encoding="utf-8")

    script = str(SERVERS_DIR / "jwt_bearer_server.py")
    server = _Process([sys.executable, script, str(config_path)], workdir / "stderr.log", None)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        base_url = server.wait_for_url(deadline)
        server.wait_until_ready(f"{base_url}/_test/token-requests", deadline)
        yield JwtBearerServer(
            base_url=base_url,
            issuer=issuer,
            private_key_pem=private_key_pem,
            algorithm="ES256",
            kid="robot-1",
        )
    finally:
        server.stop()


# -- the development login, driven headlessly --------------------------------------


def obtain_refresh_token(issuer: str, client_id: str, client_secret: str, scope: str) -> str:
    """Run the authorization-code flow through oidc-provider's development pages.

    Logs in as ``tester``, consents, and exchanges the code (with PKCE) for tokens; returns
    the refresh token. Needs ``offline_access`` in ``scope``.
    """
    verifier = secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    params = {
        "client_id": client_id,
        "response_type": "code",
        "redirect_uri": REDIRECT_URI,
        "scope": scope,
        "prompt": "consent",
        "state": secrets.token_urlsafe(8),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    with httpx.Client(base_url=issuer, timeout=10, follow_redirects=False) as browser:
        response = browser.get("/auth", params=params)
        code = None
        for _ in range(12):  # login, consent and the redirects between them
            location = response.headers.get("location")
            if response.status_code in {302, 303} and location:
                if location.startswith(REDIRECT_URI):
                    query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
                    if "code" not in query:
                        msg = f"authorization failed: {query}"
                        raise AssertionError(msg)
                    code = query["code"][0]
                    break
                response = browser.get(location)
                continue
            assert response.status_code == 200, response.text[:500]
            form_action = urllib.parse.urlsplit(str(response.url)).path
            if 'name="login"' in response.text:
                form = {"prompt": "login", "login": "tester", "password": "any"}
            else:
                form = {"prompt": "consent"}
            response = browser.post(form_action, data=form)
        assert code is not None, "the authorization flow did not reach the redirect URI"

    register_secret(code)
    token_response = httpx.post(
        f"{issuer}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        },
        auth=(client_id, client_secret),
        timeout=10,
    )
    token_response.raise_for_status()
    body = token_response.json()
    refresh_token: str = body["refresh_token"]
    register_secret(refresh_token, body["access_token"])
    return refresh_token
