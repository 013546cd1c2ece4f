"""An Authlib (Flask) authorization server for the JWT-bearer grant (RFC 7523 section 2.1).

Usage: python jwt_bearer_server.py CONFIG.json

CONFIG.json contains ``{"clients": [{"issuer": ..., "jwk": {public JWK}, "scope": ...}],
"expires_in": seconds}``. The server binds to 127.0.0.1 on a port the operating system
picks and prints one line ``listening http://127.0.0.1:PORT`` on stdout.

Besides Authlib's own checks (signature, ``iss``, ``aud`` = the token endpoint, ``exp``),
the assertion's times are checked strictly, without leeway: ``iat`` must not be in the
server's future and ``exp - iat`` must not exceed one hour; otherwise the answer is
``invalid_grant`` with the wording of a widely used cloud token endpoint.

Test-only route:
  GET  /_test/token-requests  every POST to /token so far: {status, error}
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, InvalidGrantError
from authlib.oauth2.rfc7523 import JWTBearerGrant
from flask import Flask, jsonify
from joserfc import jwk, jwt
from joserfc.errors import JoseError
from werkzeug.serving import make_server

SHORT_LIVED_MESSAGE = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
    "timeframe. Check your iat and exp values in the JWT claim."
)
MAX_ASSERTION_LIFETIME = 3600

state_lock = threading.Lock()
token_requests: list[dict[str, Any]] = []


class Client(ClientMixin):  # type: ignore[misc]  # Authlib has no type hints
    """A service account: an issuer with a public key and the scopes it may request."""

    def __init__(self, issuer: str, public_jwk: dict[str, Any], scope: str) -> None:
        self.issuer = issuer
        self.public_jwk = public_jwk
        self.scope = scope

    def get_client_id(self) -> str:
        return self.issuer

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return self.scope
        allowed = set(self.scope.split())
        return " ".join(item for item in scope.split() if item in allowed)

    def check_grant_type(self, grant_type: str) -> bool:
        return bool(grant_type == JWTBearerGrant.GRANT_TYPE)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return True


class User:
    def __init__(self, subject: str) -> None:
        self.subject = subject

    def get_user_id(self) -> str:
        return self.subject


def create_app(config: dict[str, Any], base_url: str) -> Flask:
    clients = {
        item["issuer"]: Client(item["issuer"], item["jwk"], item.get("scope", "read"))
        for item in config["clients"]
    }
    token_url = f"{base_url}/token"

    class StrictJwtBearerGrant(JWTBearerGrant):  # type: ignore[misc]
        LEEWAY = 0

        def get_audiences(self) -> list[str]:
            return [token_url]

        def resolve_issuer_client(self, issuer: str) -> Client | None:
            return clients.get(issuer)

        def resolve_client_public_key(self, client: Client) -> Any:
            return jwk.import_key(client.public_jwk)

        def authenticate_user(self, subject: str) -> User:
            return User(subject)

        def has_granted_permission(self, client: Client, user: User) -> bool:
            return True

        def verify_claims(self, claims: Any) -> None:
            now = time.time()
            issued_at = claims.get("iat")
            expires_at = claims.get("exp")
            if not isinstance(issued_at, int) or not isinstance(expires_at, int):
                raise InvalidGrantError(description=SHORT_LIVED_MESSAGE)
            if issued_at > now or expires_at - issued_at > MAX_ASSERTION_LIFETIME:
                raise InvalidGrantError(description=SHORT_LIVED_MESSAGE)
            # The rest of Authlib's checks (signature done, iss, aud, exp), without leeway.
            options = dict(self.CLAIMS_OPTIONS)
            options["aud"] = {"essential": True, "values": self.get_audiences()}
            registry = jwt.JWTClaimsRegistry(now=lambda: int(time.time()), leeway=0, **options)
            try:
                registry.validate(claims)
            except JoseError as error:
                raise InvalidGrantError(description=error.description) from error

    app = Flask("jwt_bearer_server")
    server = AuthorizationServer(
        app,
        query_client=lambda client_id: clients.get(client_id),
        save_token=lambda token, oauth_request: None,
    )
    app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {
        JWTBearerGrant.GRANT_TYPE: int(config.get("expires_in", 300))
    }
    server.load_config(app.config)
    server.register_grant(StrictJwtBearerGrant)

    @app.post("/token")
    def issue_token() -> Any:
        response = server.create_token_response()
        record: dict[str, Any] = {"status": response.status_code, "error": None}
        if response.status_code != 200:
            record["error"] = (response.get_json(silent=True) or {}).get("error")
        with state_lock:
            token_requests.append(record)
        return response

    @app.get("/_test/token-requests")
    def list_token_requests() -> Any:
        with state_lock:
            return jsonify(list(token_requests))

    return app


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as config_file:
        config = json.load(config_file)
    placeholder = Flask("placeholder")
    http_server = make_server("127.0.0.1", 0, placeholder, threaded=True)
    base_url = f"http://127.0.0.1:{http_server.server_port}"
    http_server.app = create_app(config, base_url)
    print(f"listening {base_url}", flush=True)
    http_server.serve_forever()


if __name__ == "__main__":
    main()
