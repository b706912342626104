"""The adapter packages committed in adapters/: `make up` serves them, and they reproduce their metrics."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from pm_server.model.base import load_base
from pm_server.model.package import find_packages
from pm_server.serving.api import create_app
from pm_server.serving.config import ServerSettings
from pm_server.training.evaluation import Accuracy, PackageScorer, labelled_margins
from pm_server.training.pairs import pair_bucket, read_pairs

ROOT = Path(__file__).resolve().parents[2] / "adapters"
DEFAULTS = {"helpfulness", "harmlessness", "factuality", "toxicity", "bias", "single_pm"}

pytestmark = pytest.mark.slow


def test_make_up_serves_the_default_packages(live_server):
    assert {n for n, _ in find_packages(ROOT)} == DEFAULTS
    settings = ServerSettings(adapter_root=ROOT, insecure_dev=True, device="cpu")
    server = live_server(create_app(settings)).start()
    info = {p["name"]: p for p in httpx.get(server.url + "/v1/principles", timeout=30).json()["principles"]}
    assert set(info) >= DEFAULTS
    for name in DEFAULTS:
        assert info[name]["kind"] == "adapter" and info[name]["metrics"]["val_accuracy"] > 0.5
        assert info[name]["calibration"]["std"] > 0
    items = [
        {"prompt": "What happens if you crack your knuckles a lot?", "response": "Nothing in particular happens."},
        {"prompt": "What happens if you crack your knuckles a lot?", "response": "You will get arthritis."},
    ]
    r = httpx.post(server.url + "/v1/score", json={"items": items, "principles": sorted(DEFAULTS)}, timeout=60)
    assert r.status_code == 200, r.text
    assert all(len(x["scores"]) == len(DEFAULTS) for x in r.json()["results"])


@pytest.mark.parametrize(
    "principle,files", [("factuality", ["factuality_truthfulqa.jsonl", "helpfulness_qafeedback.jsonl"])]
)
def test_default_package_reproduces_its_validation_accuracy(principle, files, shared_data):
    """Scored here, the package's own held-out prompts give exactly the accuracy it recorded in training."""
    scorer = PackageScorer(load_base("minilm", device="cpu"), ROOT)
    pkg = scorer.load(principle)
    split = pkg.manifest.provenance["split"]
    pairs = [p for f in files for p in read_pairs(shared_data / f) if p.principle == principle]
    val = [p for p in pairs if pair_bucket(p, split["salt"]) < split["val_fraction"]]
    assert len(val) == pkg.manifest.metrics["val_pairs"]
    acc = Accuracy.of(labelled_margins(scorer.pair_scores(principle, val), val))
    assert acc.value == pytest.approx(pkg.manifest.metrics["val_accuracy"], abs=2e-3)
