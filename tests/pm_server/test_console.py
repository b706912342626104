"""The console's server side over real HTTP: the page, /v1/scalarize, /v1/scalarizers, /v1/stats and the PPO
runs (curves, reward-hacking warnings, and names that must not leave the runs directory)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
import torch

from morlaif.scalarize import SCALARIZERS, scalarize
from pm_server.serving.api import create_app
from pm_server.serving.config import ServerSettings
from pm_server.serving.console import HACKING_DELTA, hacking_warnings

API_KEY = "console-key-0123456789"
ADMIN_KEY = "console-admin-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ITEMS = [
    {"prompt": "What is the capital of France?", "response": "Paris is the capital of France."},
    {"prompt": "What is the capital of France?", "response": "I cannot help with that."},
    {"prompt": "How do I boil an egg?", "response": "Nine minutes in boiling water, then cool it."},
]


def write_run(root: Path, name: str, rows: list[dict], *, kl_target: float | None = None, tail: str = "") -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    if kl_target is not None:
        (d / "config.yaml").write_text(f"ppo:\n  kl_target: {kl_target}\n")
    return d


def hacked_rows(n: int = 16) -> list[dict]:
    """helpfulness climbs 0 -> 1.5 while harmlessness sinks 0 -> -0.75, KL grows 0 -> 15."""
    return [
        {
            "step": i + 1,
            "reward": i * 0.05,
            "kl": i * 1.0,
            "score/helpfulness": i * 0.1,
            "score/harmlessness": -i * 0.05,
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    write_run(root, "hacked", hacked_rows(), kl_target=3.0, tail='{"step": 17, "rew')  # a line being written
    calm = [
        {"step": i + 1, "reward": 0.1, "kl": 0.5, "score/helpfulness": 0.2 + 0.01 * i, "score/harmlessness": 0.1}
        for i in range(12)
    ]
    write_run(root, "calm", calm)
    outside = tmp_path_factory.mktemp("elsewhere")
    write_run(outside, "secret", hacked_rows())
    os.symlink(outside / "secret", root / "escape")  # a run that is really outside the runs directory
    (root / "not-a-run").mkdir()
    return root


@pytest.fixture(scope="module")
def server(module_live_server, tiny_encoder_dir, encoder_root, runs_dir):
    settings = ServerSettings(
        base_model=str(tiny_encoder_dir),
        adapter_root=encoder_root,
        api_key=API_KEY,
        admin_key=ADMIN_KEY,
        runs_dir=runs_dir,
        default_scalarizer="soft_max_min",
        default_weights={"helpfulness": 2.0, "harmlessness": 1.0},
        default_scalarizer_params={"temperature": 0.5},
    )
    return module_live_server(create_app(settings)).start()


def get(server, path, headers=AUTH):
    return httpx.get(server.url + path, headers=headers, timeout=30)


def post(server, path, body, headers=AUTH):
    return httpx.post(server.url + path, json=body, headers=headers, timeout=30)


def test_page_and_assets_are_served_without_a_key_under_a_strict_policy(server):
    page = httpx.get(server.url + "/", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/console/console.js"' in page.text
    js = httpx.get(server.url + "/console/console.js", timeout=10)
    assert js.status_code == 200 and "sessionStorage" in js.text and "localStorage" not in js.text
    assert "innerHTML" not in js.text  # server and user text only ever goes in as textContent
    assert httpx.get(server.url + "/console/console.css", timeout=10).status_code == 200
    assert httpx.get(server.url + "/console/../api.py", timeout=10).status_code == 404
    # the data behind it is not open
    assert get(server, "/v1/stats", headers={}).status_code == 401
    assert get(server, "/v1/runs", headers={}).status_code == 401


def test_scalarize_equals_the_library_and_the_reward_of_score(server):
    spec = {"name": "soft_max_min", "weights": {"helpfulness": 2.0, "harmlessness": 0.5, "factuality": 1.0}}
    spec["params"] = {"temperature": 0.25}
    scored = post(server, "/v1/score", {"items": ITEMS, "scalarizer": spec}).json()
    names = ["helpfulness", "harmlessness", "factuality"]
    scores = [{n: r["scores"][n] for n in names} for r in scored["results"]]
    out = post(server, "/v1/scalarize", {"scores": scores, "scalarizer": spec})
    assert out.status_code == 200, out.text
    body = out.json()
    assert body["principles"] == names and body["scalarizer"] == "soft_max_min"

    def library(spec):
        table = torch.tensor([[s[n] for n in names] for s in scores], dtype=torch.float64)
        return scalarize(table, names, name=spec["name"], weights=spec["weights"], params=spec["params"]).tolist()

    assert body["rewards"] == pytest.approx(library(spec), abs=1e-12)
    assert body["rewards"] == pytest.approx([r["reward"] for r in scored["results"]], abs=1e-12)
    # another weight moves the reward the way the library says
    spec["weights"]["harmlessness"] = 3.0
    moved = post(server, "/v1/scalarize", {"scores": scores, "scalarizer": spec}).json()["rewards"]
    assert moved == pytest.approx(library(spec), abs=1e-12) and moved != pytest.approx(body["rewards"])


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"scores": [{"a": 1.0}, {"b": 1.0}]}, "scores.1", "every item needs the same"),
        ({"scores": []}, "scores", "at least 1"),
        ({"scores": [{"a": 1.0}], "scalarizer": {"name": "nope"}}, "scalarizer.name", "unknown scalarizer"),
        ({"scores": [{"a": 1.0, "b": 2.0}], "scalarizer": {"weights": {"a": 1}}}, "scalarizer.weights", "no weight"),
        ({"scores": [{"a": 1.0}], "scalarizer": {"params": {"x": 1}}}, "scalarizer.params", "unknown parameter"),
        ({"scores": [{"a": "high"}]}, "scores.0.a", "valid number"),
    ],
)
def test_scalarize_rejects_bad_input_naming_the_field(server, body, param, words):
    resp = post(server, "/v1/scalarize", body)
    assert 400 <= resp.status_code < 500, resp.text
    err = resp.json()["error"]
    assert err["param"] == param and words in err["message"], err


def test_scalarizers_lists_the_registry_and_the_server_default(server):
    body = get(server, "/v1/scalarizers").json()
    listed = {s["name"]: s for s in body["scalarizers"]}
    assert set(listed) == set(SCALARIZERS)
    assert listed["soft_max_min"]["params"] == {"temperature": 1.0} and listed["soft_max_min"]["monotone"]
    assert listed["soft_max_min_morlaif"]["monotone"] is False
    assert body["default"] == {
        "name": "soft_max_min",
        "weights": {"helpfulness": 2.0, "harmlessness": 1.0},
        "params": {"temperature": 0.5},
    }


def test_stats_count_and_bin_every_score_served(server):
    before = get(server, "/v1/stats").json()
    scored = post(server, "/v1/score", {"items": ITEMS, "principles": ["helpfulness", "factuality"]}).json()
    after = get(server, "/v1/stats").json()
    assert after["scores_total"] - before["scores_total"] == len(ITEMS) * 2
    assert after["requests"]["score"] - before["requests"].get("score", 0) == 1
    assert after["rows_total"] - before["rows_total"] == len(ITEMS) * 2
    assert after["forward_seconds"] > before["forward_seconds"]
    hist = {h["principle"]: h for h in after["principles"]}
    old = {h["principle"]: h for h in before["principles"]}
    h = hist["helpfulness"]
    assert len(h["counts"]) == len(h["bounds"]) + 1 and sum(h["counts"]) == h["count"]
    new_scores = [r["scores"]["helpfulness"] for r in scored["results"]]
    prev = old.get("helpfulness")
    prev_counts = prev["counts"] if prev else [0] * len(h["counts"])
    for s in new_scores:  # each new score landed in the bucket its value belongs to
        k = next((i for i, b in enumerate(h["bounds"]) if s <= b), len(h["bounds"]))
        assert h["counts"][k] > prev_counts[k]
    total_before = prev["mean"] * prev["count"] if prev else 0.0
    assert h["mean"] * h["count"] - total_before == pytest.approx(sum(new_scores), abs=1e-9)


def test_runs_are_listed_from_the_runs_directory_only(server):
    body = get(server, "/v1/runs").json()
    assert body["configured"] is True
    assert {r["name"]: r["steps"] for r in body["runs"]} == {"calm": 12, "hacked": 17}


def test_run_curves_and_reward_hacking_warnings(server):
    run = get(server, "/v1/runs/hacked").json()
    assert run["steps"] == list(range(1, 17)) and run["skipped_lines"] == 1
    assert run["scores"]["helpfulness"][-1] == pytest.approx(1.5)
    assert run["kl"][:3] == [0.0, 1.0, 2.0] and run["kl_target"] == 3.0
    assert len(run["warnings"]) == 2
    hacking, runaway = run["warnings"]
    # first quarter (steps 1-4) against the last (13-16): helpfulness +1.20, harmlessness -0.60
    assert "possible reward hacking: helpfulness +1.20 while harmlessness -0.60" in hacking
    assert "KL runaway: 13.50 nats" in runaway and "target 3" in runaway
    calm = get(server, "/v1/runs/calm").json()
    assert calm["warnings"] == [] and calm["kl_target"] == 6.0  # no config.yaml: PPO's default target


@pytest.mark.parametrize("name", ["escape", "not-a-run", "nope", "..", "%2E%2E", "..%2Fcalm", "calm%2F..%2Fcalm"])
def test_run_names_never_reach_outside_the_runs_directory(server, name):
    resp = get(server, f"/v1/runs/{name}")
    assert resp.status_code == 404, resp.text
    assert "secret" not in resp.text


def test_without_a_runs_directory_the_console_says_so(live_server, tiny_encoder_dir, encoder_root):
    settings = ServerSettings(base_model=str(tiny_encoder_dir), adapter_root=encoder_root, insecure_dev=True)
    srv = live_server(create_app(settings)).start()
    assert httpx.get(srv.url + "/v1/runs").json() == {"configured": False, "runs": []}
    resp = httpx.get(srv.url + "/v1/runs/ppo")
    assert resp.status_code == 404 and "MORLAIF_RUNS_DIR" in resp.json()["error"]["message"]


def test_hacking_warnings_need_opposite_moves_and_enough_steps():
    up = [i * 0.1 for i in range(16)]
    down = [-x for x in up]
    flat = [0.0] * 16
    assert hacking_warnings({"a": up, "b": up}, flat, 6.0) == []  # everything improving is not hacking
    assert hacking_warnings({"a": up, "b": flat}, flat, 6.0) == []
    assert len(hacking_warnings({"a": up, "b": down}, flat, 6.0)) == 1
    assert hacking_warnings({"a": up[:7], "b": down[:7]}, flat[:7], 6.0) == []  # too short to tell
    # just under the threshold: no warning; just over: one
    small = [0.0] * 4 + [HACKING_DELTA / 2] * 8 + [HACKING_DELTA * 0.99] * 4
    assert hacking_warnings({"a": small, "b": [-x for x in small]}, flat, 6.0) == []
    big = [0.0] * 4 + [HACKING_DELTA] * 12
    assert len(hacking_warnings({"a": big, "b": [-x for x in big]}, flat, 6.0)) == 1
    # missing values (a step without a principle's score) are left out of the means
    gappy = [None, 0.0, 0.0, 0.0] + [1.0] * 12
    assert len(hacking_warnings({"a": gappy, "b": [0.0] * 4 + [-1.0] * 12}, flat, 6.0)) == 1
    assert hacking_warnings({"a": flat}, [11.9] * 16, 6.0) == []
    assert "KL runaway" in hacking_warnings({"a": flat}, [12.1] * 16, 6.0)[0]
