"""The HTTP API against a real uvicorn server on loopback, with tiny real models."""

from __future__ import annotations

import concurrent.futures
import math
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from morlaif.scalarize import scalarize
from pm_server.serving.api import create_app
from pm_server.serving.config import ServerSettings

API_KEY = "score-key-0123456789"
ADMIN_KEY = "admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
LEARNED = ["factuality", "harmlessness", "helpfulness"]

ITEMS = [
    {"prompt": "What is the capital of France?", "response": "Paris is the capital of France."},
    {
        "prompt": "How do I boil an egg?",
        "response": "Put it in boiling water for nine minutes, then cool it.",
    },
    {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
        ]
    },
]


def start(live_server, base_dir: Path, root: Path, **overrides):
    settings = ServerSettings(
        base_model=str(base_dir), adapter_root=root, api_key=API_KEY, admin_key=ADMIN_KEY, **overrides
    )
    return live_server(create_app(settings)).start()


@pytest.fixture
def server(live_server, tiny_encoder_dir, encoder_root):
    return start(live_server, tiny_encoder_dir, encoder_root)


def post(server, path, body, headers=AUTH, **kw):
    return httpx.post(server.url + path, json=body, headers=headers, timeout=30, **kw)


def error_of(resp):
    body = resp.json()
    assert set(body) == {"error"}, body
    assert {"message", "type", "code"} <= set(body["error"]), body
    return body["error"]


def test_score_all_principles(server, encoder_base):
    r = post(server, "/v1/score", {"items": ITEMS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert sorted(body["principles"]) == sorted(LEARNED + ["brevity", "no_refusal"])
    assert body["versions"]["helpfulness"] == "v1" and body["versions"]["brevity"] == "rule-1"
    assert body["usage"]["forward_rows"] == 3 * len(LEARNED)
    for res in body["results"]:
        # helpfulness was packaged with calibration mean 0.5, std 2.0
        assert res["scores"]["helpfulness"] == pytest.approx((res["raw_scores"]["helpfulness"] - 0.5) / 2.0)
        assert res["scores"]["brevity"] == pytest.approx((res["raw_scores"]["brevity"] + 100) / 100)
        assert res["raw_scores"]["no_refusal"] == 1.0
        assert res["tokens"] > 0 and res["truncated"] is False
    refusal = post(
        server,
        "/v1/score",
        {
            "items": [{"prompt": "x", "response": "I'm sorry, I can't."}],
            "principles": ["no_refusal", "brevity"],
            "normalize": False,
        },
    ).json()
    assert refusal["results"][0]["scores"]["no_refusal"] == 0.0
    n_tokens = len(encoder_base.tokenizer.tokenize("I'm sorry, I can't."))
    assert n_tokens == 10  # i ' m sorry , i can ' t .
    assert refusal["results"][0]["scores"]["brevity"] == -n_tokens


def test_scores_independent_of_batch(server):
    alone = post(server, "/v1/score", {"items": ITEMS[:1], "principles": LEARNED}).json()["results"][0]
    many = [ITEMS[1], {"prompt": "long " * 200, "response": "padding " * 60}] + ITEMS[:1] + ITEMS
    together = post(server, "/v1/score", {"items": many, "principles": LEARNED}).json()["results"][2]
    for p in LEARNED:
        assert together["raw_scores"][p] == pytest.approx(alone["raw_scores"][p], abs=1e-4)


def test_scalarized_reward_matches_the_library(server):
    spec = {
        "name": "soft_max_min",
        "weights": {"helpfulness": 2.0, "harmlessness": 1.0, "brevity": 0.5},
        "params": {"temperature": 0.7},
    }
    body = post(server, "/v1/score", {"items": ITEMS, "scalarizer": spec}).json()
    assert body["principles"] == ["helpfulness", "harmlessness", "brevity"]
    scores = torch.tensor([[r["scores"][p] for p in body["principles"]] for r in body["results"]])
    expect = scalarize(scores, body["principles"], name="soft_max_min", weights=spec["weights"], params=spec["params"])
    assert [r["reward"] for r in body["results"]] == pytest.approx(expect.tolist(), abs=1e-6)


def test_compare(server):
    r = post(
        server,
        "/v1/compare",
        {
            "prompt": "Is the earth round?",
            "response_a": "Yes, roughly a sphere.",
            "response_b": "No.",
            "scalarizer": {"name": "linear"},
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    for v in body["principles"].values():
        assert v["p_a_better"] == pytest.approx(1 / (1 + math.exp(-(v["score_a"] - v["score_b"]))))
    assert body["reward"]["score_a"] == pytest.approx(sum(v["score_a"] for v in body["principles"].values()))


def test_openrlhf_get_reward(server):
    prompts = ["Human: hi\n\nAssistant:", "Human: 2+2?\n\nAssistant:"]
    queries = [prompts[0] + " Hello there!", prompts[1] + " 4"]
    r = post(server, "/get_reward", {"query": queries, "prompts": prompts, "labels": ["", ""]})
    assert r.status_code == 200, r.text
    rewards = r.json()["rewards"]
    direct = post(
        server,
        "/v1/score",
        {
            "items": [
                {"prompt": prompts[0], "response": " Hello there!"},
                {"prompt": prompts[1], "response": " 4"},
            ],
            "scalarizer": {"name": "linear"},
        },
    ).json()
    assert rewards == pytest.approx([x["reward"] for x in direct["results"]])
    assert [i["split"] for i in r.json()["info"]] == ["prefix", "prefix"]
    # a query that does not contain its prompt is still scored (the whole query as the response), and says so
    other = post(server, "/get_reward", {"query": ["something else"], "prompts": ["Human: hi"]})
    assert other.status_code == 200 and other.json()["info"][0]["split"] == "unmatched"
    alone = post(server, "/v1/score", {"items": [{"prompt": "Human: hi", "response": "something else"}],
                                       "scalarizer": {"name": "linear"}}).json()  # fmt: skip
    assert other.json()["rewards"] == pytest.approx([alone["results"][0]["reward"]])
    # mismatched lengths are still the request's error, naming the field
    bad = post(server, "/get_reward", {"query": ["a", "b"], "prompts": ["a"]})
    assert bad.status_code == 400 and error_of(bad)["param"] == "prompts"


def test_auth(server):
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/readyz").json()["status"] == "ready"
    r = post(server, "/v1/score", {"items": ITEMS}, headers={})
    assert r.status_code == 401 and error_of(r)["type"] == "authentication_error"
    assert post(server, "/v1/score", {"items": ITEMS}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert post(server, "/v1/score", {"items": ITEMS}, headers=ADMIN).status_code == 200
    r = post(server, "/v1/adapters", {"name": "helpfulness", "version": "v1"}, headers=AUTH)
    assert r.status_code == 401 and error_of(r)["code"] == "invalid_admin_key"
    assert httpx.get(server.url + "/metrics").status_code == 401
    m = httpx.get(server.url + "/metrics", headers=AUTH).text
    assert "morlaif_batch_rows_bucket" in m and "morlaif_queue_rows" in m
    assert API_KEY not in m


def test_refuses_to_start_without_keys(tiny_encoder_dir):
    with pytest.raises(ValueError, match="MORLAIF_API_KEY and MORLAIF_ADMIN_KEY"):
        ServerSettings(base_model=str(tiny_encoder_dir))
    assert ServerSettings(base_model=str(tiny_encoder_dir), insecure_dev=True).insecure_dev


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"items": ITEMS, "principles": ["helpfulness", "nope"]}, 400, "unknown_principle", "principles"),
        (
            {"items": ITEMS, "scalarizer": {"name": "linear", "weights": {"helpfulness": -1}}},
            400,
            "invalid_scalarizer",
            "scalarizer.weights.helpfulness",
        ),
        (
            {
                "items": ITEMS,
                "scalarizer": {"name": "linear", "weights": {"helpfulness": 1}},
                "principles": ["helpfulness", "factuality"],
            },
            400,
            "invalid_scalarizer",
            "scalarizer.weights",
        ),
        ({"items": ITEMS, "scalarizer": {"name": "max_avg"}}, 400, "invalid_scalarizer", "scalarizer.name"),
        ({"items": []}, 422, "invalid_request", "items"),
        ({"items": [{"prompt": "p"}]}, 422, "invalid_request", "items.0"),
        ({"items": [{"prompt": "p", "response": "r" * 70000}]}, 400, "invalid_request", "items[0].response"),
        ({"items": [{"prompt": "p", "response": "r"}] * 600}, 413, "too_many_items", "items"),
        (
            {"items": ITEMS, "expected_versions": {"helpfulness": "v0"}},
            409,
            "version_not_loaded",
            "expected_versions.helpfulness",
        ),
        ({"items": ITEMS, "bogus": 1}, 422, "invalid_request", "bogus"),
    ],
)
def test_bad_scoring_input(server, body, status, code, param):
    r = post(server, "/v1/score", body)
    assert r.status_code == status, r.text
    err = error_of(r)
    assert err["code"] == code and err["param"] == param, err
    assert param.split(".")[0].split("[")[0] in err["message"]
    if code == "unknown_principle":
        assert "loaded: " in err["message"] and "helpfulness" in err["message"]


def test_malformed_and_oversized_bodies(live_server, tiny_encoder_dir, encoder_root):
    srv = start(live_server, tiny_encoder_dir, encoder_root, max_request_bytes=2048)
    r = httpx.post(srv.url + "/v1/score", content=b'{"items": [', headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 400 and error_of(r)["code"] == "malformed_json"
    r = post(srv, "/v1/score", {"items": [{"prompt": "p", "response": "x" * 5000}]})
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"

    def chunks():
        yield b'{"items": [{"prompt": "p", "response": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}]}'

    r = httpx.post(srv.url + "/v1/score", content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413


def test_bad_admin_input(live_server, tiny_encoder_dir, encoder_root, tmp_path, decoder_base):
    from rigs.pm_packages import make_random_package

    root = tmp_path / "root"
    shutil.copytree(encoder_root, root)
    make_random_package(root, decoder_base, "helpfulness", "zz-other-base")
    (root / "helpfulness" / "v1" / "adapter_model.bin").write_bytes(b"\x80\x04.")  # poisons v1 on disk
    srv = start(live_server, tiny_encoder_dir, root, load_on_start=False)
    cases = [
        ({"name": "helpfulness", "path": "../../etc"}, 400, "path_outside_root"),
        ({"name": "helpfulness", "path": "/etc"}, 400, "path_outside_root"),
        ({"name": "helpfulness", "version": "zz-other-base"}, 400, "base_mismatch"),
        ({"name": "helpfulness", "version": "v1"}, 400, "not_safetensors"),
        ({"name": "helpfulness", "version": "v7"}, 404, "package_not_found"),
        ({"name": "Bad Name", "version": "v1"}, 422, "invalid_request"),
        ({"name": "harmlessness", "path": "helpfulness/zz-other-base"}, 400, "principle_mismatch"),
    ]
    for body, status, code in cases:
        r = post(srv, "/v1/adapters", body, headers=ADMIN)
        assert r.status_code == status, (body, r.text)
        assert error_of(r)["code"] == code, (body, r.text)
        assert (error_of(r)["type"] == "not_found_error") == (status == 404), r.text
    r = httpx.delete(srv.url + "/v1/adapters/nothing", headers=ADMIN)
    assert r.status_code == 404 and "loaded: " in error_of(r)["message"]
    ok = post(srv, "/v1/adapters", {"name": "harmlessness"}, headers=ADMIN)
    assert ok.status_code == 200 and ok.json()["action"] == "loaded"


def test_backpressure_answers_429_not_timeouts(live_server, tiny_encoder_dir, encoder_root):
    # the model thread waits 100 ms for a batch to fill: two requests fit the queue, the others must get 429
    srv = start(live_server, tiny_encoder_dir, encoder_root, max_queued_rows=6, max_wait_ms=100.0, max_batch_rows=64)
    body = {"items": ITEMS[:1], "principles": LEARNED}
    expect = post(srv, "/v1/score", body).json()["results"][0]["raw_scores"]

    def one(_):
        return httpx.post(srv.url + "/v1/score", json=body, headers=AUTH, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(24) as ex:
        results = list(ex.map(one, range(48)))
    codes = [r.status_code for r in results]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(429) > 0 and codes.count(200) > 0
    for r in results:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1 and error_of(r)["type"] == "rate_limit_error"
        else:
            assert r.json()["results"][0]["raw_scores"] == pytest.approx(expect, abs=1e-4)
    huge = post(srv, "/v1/score", {"items": ITEMS, "principles": LEARNED})
    assert huge.status_code == 413 and "split it" in error_of(huge)["message"]


def test_hot_swap_under_load_fails_nothing(live_server, tiny_encoder_dir, encoder_root, encoder_v2_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(encoder_root, root)
    srv = start(live_server, tiny_encoder_dir, root, max_wait_ms=2.0)
    body = {"items": ITEMS, "principles": LEARNED}
    v1 = post(srv, "/v1/score", body).json()
    shutil.copytree(encoder_v2_root / "helpfulness" / "v2", root / "helpfulness" / "v2")

    stop = threading.Event()
    seen: list[httpx.Response] = []

    def hammer():
        with httpx.Client(headers=AUTH, timeout=30) as c:
            while not stop.is_set():
                seen.append(c.post(srv.url + "/v1/score", json={"items": ITEMS, "principles": ["helpfulness"]}))

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    r = post(srv, "/v1/adapters", {"name": "helpfulness", "version": "v2"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["action"] == "replaced" and r.json()["previous_version"] == "v1"
    time.sleep(0.5)
    r = post(srv, "/v1/adapters", {"name": "helpfulness", "version": "v1"}, headers=ADMIN)
    assert r.json()["action"] == "replaced"
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    v2 = post(srv, "/v1/score", {**body, "principles": ["helpfulness"]}).json()
    assert v2["versions"]["helpfulness"] == "v1"
    codes = [x.status_code for x in seen]
    assert len(codes) > 20 and set(codes) == {200}, set(codes)
    v1_raw = [x["raw_scores"]["helpfulness"] for x in v1["results"]]
    versions = set()
    for x in seen:
        b = x.json()
        versions.add(b["versions"]["helpfulness"])
        got = [res["raw_scores"]["helpfulness"] for res in b["results"]]
        if b["versions"]["helpfulness"] == "v1":  # every answer is exactly its version's scores
            assert got == pytest.approx(v1_raw, abs=1e-4)
        else:
            assert got != pytest.approx(v1_raw, abs=1e-3)
    assert versions == {"v1", "v2"}

    # a trainer pinning v1 gets 409 once v1 is gone, never a v2 score
    post(srv, "/v1/adapters", {"name": "helpfulness", "version": "v2"}, headers=ADMIN)
    pinned = post(srv, "/v1/score", {**body, "expected_versions": {"helpfulness": "v1"}})
    assert pinned.status_code == 409 and error_of(pinned)["code"] == "version_not_loaded"
    # unload while in flight: the principle disappears for new requests only
    r = httpx.delete(srv.url + "/v1/adapters/factuality", headers=ADMIN)
    assert r.status_code == 200 and r.json()["action"] == "unloaded"
    assert "factuality" not in post(srv, "/v1/score", {"items": ITEMS}).json()["principles"]


def test_rows_of_clients_that_went_away_are_dropped(live_server, tiny_encoder_dir, encoder_root):
    srv = start(live_server, tiny_encoder_dir, encoder_root, max_wait_ms=1500.0)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(srv.url + "/v1/score", json={"items": ITEMS, "principles": LEARNED}, headers=AUTH, timeout=0.4)
    deadline = time.monotonic() + 5
    dropped = 0.0
    while time.monotonic() < deadline and dropped == 0:
        time.sleep(0.1)
        for line in httpx.get(srv.url + "/metrics", headers=AUTH).text.splitlines():
            if line.startswith("morlaif_dropped_rows_total "):
                dropped = float(line.split()[1])
    assert dropped == len(ITEMS) * len(LEARNED)
    # the server goes on answering
    assert post(srv, "/v1/score", {"items": ITEMS[:1]}).status_code == 200


def test_decoder_base_serves_over_http(live_server, tiny_decoder_dir, decoder_base, tmp_path):
    from rigs.pm_packages import make_random_package

    make_random_package(tmp_path, decoder_base, "helpfulness", "v1", seed=7)
    make_random_package(tmp_path, decoder_base, "sycophancy", "v1", seed=8)
    srv = start(live_server, tiny_decoder_dir, tmp_path)
    info = httpx.get(srv.url + "/v1/principles", headers=AUTH).json()
    assert info["base_config_hash"] == decoder_base.config_hash
    learned = ["helpfulness", "sycophancy"]
    alone = post(srv, "/v1/score", {"items": ITEMS[:1], "principles": learned}).json()["results"][0]
    mixed = post(srv, "/v1/score", {"items": ITEMS + ITEMS[:1], "principles": learned}).json()["results"][-1]
    for p in learned:
        assert mixed["raw_scores"][p] == pytest.approx(alone["raw_scores"][p], abs=1e-4)
    assert alone["raw_scores"]["helpfulness"] != pytest.approx(alone["raw_scores"]["sycophancy"], abs=1e-4)


def test_decoder_group_shares_its_prompt_over_http(live_server, tiny_decoder_dir, decoder_base, tmp_path):
    """A GRPO-like request (several responses to one prompt) on a decoder: the prompt is computed once (the
    server's counter says how many tokens that saved) and every score equals the response scored alone."""
    import re

    from rigs.pm_packages import make_random_package

    make_random_package(tmp_path, decoder_base, "helpfulness", "v1", seed=7, layers_to_transform=[1])
    srv = start(live_server, tiny_decoder_dir, tmp_path)
    prompt = "Write a short poem about the sea, the wind and the gulls, and keep it gentle please."
    group = [{"prompt": prompt, "response": r} for r in ("Waves.", "The sea sighs; gulls wheel.", "No.", "Wind!")]
    together = post(srv, "/v1/score", {"items": group}).json()["results"]
    metrics = httpx.get(srv.url + "/metrics", headers=AUTH).text
    shared = float(re.search(r"^morlaif_prompt_tokens_shared_total (\S+)$", metrics, re.M).group(1))
    assert shared > 0
    for item, got in zip(group, together, strict=True):
        alone = post(srv, "/v1/score", {"items": [item]}).json()["results"][0]
        assert got["raw_scores"]["helpfulness"] == pytest.approx(alone["raw_scores"]["helpfulness"], abs=1e-5)


def test_each_package_uses_its_own_template(live_server, tiny_encoder_dir, encoder_base, tmp_path):
    from pm_server.model.engine import Row, ScoringEngine
    from pm_server.model.template import InputTemplate, TemplateEncoder
    from rigs.pm_packages import make_random_package

    short = InputTemplate(kind="pair", max_length=16)
    make_random_package(tmp_path, encoder_base, "conciseness", "v1", seed=3, template=short)
    make_random_package(tmp_path, encoder_base, "detail", "v1", seed=4)
    srv = start(live_server, tiny_encoder_dir, tmp_path)
    item = {"prompt": "tell me about the history of tea " * 3, "response": "tea came from china long ago"}
    got = post(srv, "/v1/score", {"items": [item], "principles": ["conciseness", "detail"], "normalize": False})
    raw = got.json()["results"][0]["raw_scores"]
    # the same scores from a bare engine, each package with its own template
    engine = ScoringEngine(load_base_fresh(tiny_encoder_dir))
    engine.load_adapter(tmp_path / "conciseness" / "v1", "c")
    engine.load_adapter(tmp_path / "detail" / "v1", "d")
    e16 = TemplateEncoder(encoder_base.tokenizer, short).encode(item["prompt"], item["response"])
    e_full = TemplateEncoder(encoder_base.tokenizer, encoder_base.default_template).encode(
        item["prompt"], item["response"]
    )
    assert len(e16) == 16 and len(e_full) > 16
    expect = engine.score(
        [Row(e16.input_ids, e16.token_type_ids, "c"), Row(e_full.input_ids, e_full.token_type_ids, "d")]
    )
    assert [raw["conciseness"], raw["detail"]] == pytest.approx(expect, abs=1e-4)


def load_base_fresh(path):
    from pm_server.model.base import load_base

    return load_base(str(path))


def test_an_empty_response_is_scored(server):
    """An RL policy that stops at once still needs a reward."""
    body = {"items": [{"prompt": "hi", "response": ""}], "principles": ["brevity", "factuality"]}
    r = post(server, "/v1/score", body)
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert res["raw_scores"]["brevity"] == 0.0 and math.isfinite(res["raw_scores"]["factuality"])


def test_keys_never_reach_the_logs(live_server, tiny_encoder_dir, encoder_root, caplog):
    """Right and wrong keys on scoring and admin calls, every logger at DEBUG: no key appears in any log
    record (uvicorn's access log included), and error bodies do not echo them."""
    import logging

    caplog.set_level(logging.DEBUG)
    srv = start(live_server, tiny_encoder_dir, encoder_root)
    wrong = "wrong-key-SECRET-0123456789"
    bodies = []
    for headers in (AUTH, ADMIN, {"Authorization": f"Bearer {wrong}"}, {"Authorization": wrong}):
        bodies.append(post(srv, "/v1/score", {"items": ITEMS[:1]}, headers=headers).text)
        bodies.append(post(srv, "/v1/adapters", {"name": "helpfulness", "version": "v9"}, headers=headers).text)
        bodies.append(httpx.delete(srv.url + "/v1/adapters/nothing", headers=headers, timeout=30).text)
    assert any('"invalid_api_key"' in b for b in bodies)  # the wrong keys were refused
    assert "loaded" in caplog.text or "ready" in caplog.text  # the server's own records are captured
    logged = caplog.text + "\n".join(bodies)
    for secret in (API_KEY, ADMIN_KEY, wrong):
        assert secret not in logged


def test_a_broken_new_version_is_refused_and_the_old_one_keeps_serving(
    live_server, tiny_encoder_dir, encoder_root, tmp_path
):
    """Corrupt, truncated, pickled, symlinked-out and wrong-base packages of a served principle: each load
    is a 4xx naming why, and the version already served answers the same scores throughout."""
    import os

    root = tmp_path / "root"
    shutil.copytree(encoder_root, root)
    good = root / "helpfulness" / "v1"
    srv = start(live_server, tiny_encoder_dir, root)
    body = {"items": ITEMS[:2], "principles": ["helpfulness"]}
    before = post(srv, "/v1/score", body).json()
    weights = (good / "adapter_model.safetensors").read_bytes()

    def variant(version, fix):
        d = root / "helpfulness" / version
        shutil.copytree(good, d, symlinks=True)
        fix(d)
        return version

    def write(name, data):
        return lambda d: (d / name).write_bytes(data)

    def link_out(d):
        (d / "adapter_model.safetensors").unlink()
        outside = tmp_path / "outside.safetensors"
        outside.write_bytes(weights)
        os.symlink(outside, d / "adapter_model.safetensors")

    cases = [
        (variant("v2-truncated", write("adapter_model.safetensors", weights[: len(weights) // 2])), "corrupt_weights"),
        (variant("v2-garbage", write("adapter_model.safetensors", b"\x00" * 64)), "corrupt_weights"),
        (variant("v2-pickle", write("adapter_model.bin", b"\x80\x04cos\nsystem\n.")), "not_safetensors"),
        (variant("v2-symlink", link_out), "path_outside_root"),
    ]
    for version, code in cases:
        r = post(srv, "/v1/adapters", {"name": "helpfulness", "version": version}, headers=ADMIN)
        assert 400 <= r.status_code < 500 and error_of(r)["code"] == code, (version, r.text)
        now = post(srv, "/v1/score", body).json()
        assert now["versions"]["helpfulness"] == "v1"
        assert now["results"] == before["results"]


def test_default_dtype_serves_bfloat16_where_the_cpu_computes_it(
    live_server, tiny_encoder_dir, encoder_root, monkeypatch
):
    """MORLAIF_DTYPE unset: `auto`, which serves in bfloat16 on a CPU with bfloat16 instructions, says so in
    /v1/principles, and scores within bfloat16's rounding of a float32 server's."""
    from pm_server.model import base as modeling

    monkeypatch.delenv("MORLAIF_DTYPE")
    assert ServerSettings(insecure_dev=True).dtype == "auto"
    monkeypatch.setattr(modeling, "cpu_computes_bf16", lambda: True)
    fast = start(live_server, tiny_encoder_dir, encoder_root)
    exact = start(live_server, tiny_encoder_dir, encoder_root, dtype="float32")
    info = httpx.get(fast.url + "/v1/principles", headers=AUTH).json()
    assert (info["dtype"], info["batch_invariant"]) == ("bfloat16", False)  # the documented, reported choice
    assert httpx.get(exact.url + "/v1/principles", headers=AUTH).json()["dtype"] == "float32"
    body = {"items": ITEMS, "principles": LEARNED, "normalize": False}
    got = [r["raw_scores"] for r in post(fast, "/v1/score", body).json()["results"]]
    want = [r["raw_scores"] for r in post(exact, "/v1/score", body).json()["results"]]
    flat_got = [g[p] for g in got for p in LEARNED]
    flat_want = [w[p] for w in want for p in LEARNED]
    spread = max(flat_want) - min(flat_want)
    assert spread > 0.01
    assert flat_got == pytest.approx(flat_want, abs=0.05 * spread)
    assert flat_got != pytest.approx(flat_want, abs=1e-7)  # it really computed in bfloat16
