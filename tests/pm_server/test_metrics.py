"""Every metric the PM server declares is counted: none is exposed on /metrics and never moved."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from pm_server.serving import metrics as metrics_module
from pm_server.serving.api import create_app
from pm_server.serving.config import ServerSettings
from pm_server.serving.metrics import Metrics

API_KEY = "score-key-0123456789"
ADMIN_KEY = "admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ITEMS = [
    {"prompt": "What is the capital of France?", "response": "Paris is the capital of France."},
    {"prompt": "How do I boil an egg?", "response": "Put it in boiling water for nine minutes."},
]


def _declared() -> list[str]:
    """The `Metrics` attributes that are metrics."""
    return [attr for attr, c in vars(Metrics()).items() if isinstance(c, MetricWrapperBase)]


def test_every_declared_metric_is_updated_somewhere():
    root = Path(metrics_module.__file__).parents[1]  # the pm_server package
    sources = "\n".join(p.read_text() for p in root.rglob("*.py") if p.name != "metrics.py")
    for attr in _declared():
        used = re.search(rf"metrics\.{attr}\.(inc|dec|set|observe|labels)\(", sources)
        assert used, f"Metrics.{attr} is declared but never updated"


def test_every_declared_family_has_a_sample_after_scoring(live_server, tiny_encoder_dir, encoder_root):
    settings = ServerSettings(base_model=str(tiny_encoder_dir), adapter_root=encoder_root, api_key=API_KEY,
                              admin_key=ADMIN_KEY)  # fmt: skip
    srv = live_server(create_app(settings)).start()
    ok = httpx.post(srv.url + "/v1/score", json={"items": ITEMS}, headers=AUTH, timeout=30)
    assert ok.status_code == 200, ok.text
    bad = httpx.post(srv.url + "/v1/score", json={"items": ITEMS, "principles": ["nope"]}, headers=AUTH, timeout=30)
    assert bad.status_code == 400, bad.text  # a failure, for the failures by reason
    text = httpx.get(srv.url + "/metrics", headers=AUTH, timeout=30).text
    exposed = {f.name: len(f.samples) for f in text_string_to_metric_families(text)}
    declared = {f.name for f in Metrics().registry.collect()}
    assert declared <= set(exposed), declared - set(exposed)
    assert not [n for n in declared if exposed[n] == 0], [n for n in declared if exposed[n] == 0]
