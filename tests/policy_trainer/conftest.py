"""Fixtures of the policy trainer's tests: a real PM server on loopback that serves one rule principle."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def make_rule_server(live_server, tiny_encoder_dir, tmp_path):
    """Starts PM servers whose only principle, says_good, is a rule: 1 when the response says "good", else 0."""
    from pm_server.serving.api import create_app
    from pm_server.serving.config import ServerSettings

    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"name": "says_good", "kind": "regex", "pattern": r"\bgood\b"}]))
    settings = ServerSettings(
        base_model=str(tiny_encoder_dir), adapter_root=tmp_path / "none", rules_file=rules, insecure_dev=True
    )
    return lambda port=None: live_server(create_app(settings), port=port).start()


@pytest.fixture
def rule_server(make_rule_server):
    return make_rule_server()
