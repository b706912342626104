"""What the peers' tests share: the conversation, ChatML, the server's reward of a conversation, skips."""

from __future__ import annotations

import importlib
import math
import warnings

import httpx
import pytest
from dialogue import CHATML, HISTORY, RESPONSE, chatml

__all__ = ["ADMIN_KEY", "API_KEY", "AUTH", "CHATML", "HISTORY", "RESPONSE", "chatml", "conversation_reward", "need"]

API_KEY = "score-key-0123456789"
ADMIN_KEY = "admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def need(module: str) -> None:
    """Skip, saying why, where a peer's module does not import on this machine."""
    try:
        with warnings.catch_warnings():  # peers' own deprecations (ray, verl) are not ours to fix
            warnings.simplefilter("ignore")
            importlib.import_module(module)
    except Exception as e:  # ImportError, or a GPU-only dependency failing at import
        pytest.skip(f"{module} does not import here ({type(e).__name__}: {e}); `make install` installs it")


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def conversation_reward(server, messages: list[dict]) -> float:
    """What /v1/score gives the conversation as messages under the server's default scalarizer."""
    spec = httpx.get(server.url + "/v1/scalarizers", headers=AUTH).json()["default"]
    r = httpx.post(server.url + "/v1/score", headers=AUTH, json={"items": [{"messages": messages}], "scalarizer": spec})
    assert r.status_code == 200, r.text
    return r.json()["results"][0]["reward"]
