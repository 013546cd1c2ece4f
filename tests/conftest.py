"""Shared fixtures: every async test runs on asyncio and on trio."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The secret guard fails any test whose log output contains a secret that test registered.
# servers.fixtures runs the real authorization servers (oidc-provider, Authlib).
sys.path.insert(0, str(Path(__file__).parent))
pytest_plugins = ["secret_guard", "servers.fixtures"]


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once per backend; neither can drop out silently."""
    return str(request.param)
