"""The client against real HTTP servers on loopback: a fault-injecting one and the PM server."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from morlaif.client import AsyncMorlaifClient, MorlaifClient, RemoteReward, RetryPolicy, make_trl_reward_func
from morlaif.errors import APIStatusError, RetriesExhaustedError
from morlaif.pinned import PinnedScorer
from morlaif.protocol import ScoreResponse

FAST = RetryPolicy(max_retries=3, backoff_s=0.01, max_backoff_s=0.05)


def ok_body(n: int) -> dict:
    return {
        "principles": ["helpfulness"],
        "results": [
            {
                "scores": {"helpfulness": float(i)},
                "raw_scores": {"helpfulness": float(i)},
                "reward": float(i),
                "tokens": 3,
                "truncated": False,
            }
            for i in range(n)
        ],
        "versions": {"helpfulness": "v1"},
        "scalarizer": "linear",
        "usage": {"items": n, "input_tokens": 3 * n, "forward_rows": n},
    }


def faulty_app(script: list[tuple[int, dict[str, str]]]) -> tuple[FastAPI, list[float]]:
    """Answers /v1/score with the scripted (status, headers) in turn, then 200; records call times."""
    app = FastAPI()
    calls: list[float] = []

    @app.post("/v1/score")
    async def score(request: Request) -> JSONResponse:
        body = await request.json()
        calls.append(time.monotonic())
        assert request.headers["authorization"] == "Bearer k"
        if len(calls) <= len(script):
            status, headers = script[len(calls) - 1]
            err = {"error": {"message": "injected", "type": "x", "code": f"e{status}"}}
            return JSONResponse(err, status_code=status, headers=headers)
        return JSONResponse(ok_body(len(body["items"])))

    return app, calls


def test_retries_503_and_429_honouring_retry_after(live_server):
    app, calls = faulty_app([(503, {}), (429, {"Retry-After": "1"}), (503, {})])
    srv = live_server(app).start(ready_path=None)
    with MorlaifClient(srv.url, api_key="k", retry=FAST) as c:
        assert c.rewards(["p", "q"], ["a", "b"]) == [0.0, 1.0]
    assert len(calls) == 4
    assert calls[2] - calls[1] >= 0.95  # waited the server's Retry-After, not our 50 ms cap


def test_no_retry_on_client_errors(live_server):
    app, calls = faulty_app([(400, {})])
    srv = live_server(app).start(ready_path=None)
    with MorlaifClient(srv.url, api_key="k", retry=FAST) as c, pytest.raises(APIStatusError) as e:
        c.rewards(["p"], ["a"])
    assert e.value.status_code == 400 and e.value.code == "e400" and len(calls) == 1


def test_retries_run_out(live_server):
    app, calls = faulty_app([(503, {})] * 10)
    srv = live_server(app).start(ready_path=None)
    with MorlaifClient(srv.url, api_key="k", retry=FAST) as c, pytest.raises(RetriesExhaustedError) as e:
        c.rewards(["p"], ["a"])
    assert e.value.attempts == 4 and len(calls) == 4


def test_transport_errors_are_retried_then_typed(unused_port):
    port = unused_port
    with (
        MorlaifClient(f"http://127.0.0.1:{port}", retry=FAST, timeout=2) as c,
        pytest.raises(RetriesExhaustedError) as e,
    ):
        c.rewards(["p"], ["a"])
    assert e.value.attempts == 4 and "ConnectError" in repr(e.value.last_error)


def test_repr_hides_the_key():
    with MorlaifClient("http://127.0.0.1:1", api_key="secret-key-123") as c:
        assert "secret-key-123" not in repr(c) and "127.0.0.1:1" in repr(c)


def test_async_client_and_trl_reward_func(live_server):
    app, calls = faulty_app([(503, {})])
    srv = live_server(app).start(ready_path=None)

    async def go():
        async with AsyncMorlaifClient(srv.url, api_key="k", retry=FAST) as c:
            first = await c.rewards(["p"], ["a"])
        fn = make_trl_reward_func(srv.url, api_key="k", retry=FAST)
        conv = [[{"role": "assistant", "content": "hi"}], [{"role": "assistant", "content": "yo"}]]
        second = await fn(prompts=[[{"role": "user", "content": "q"}]] * 2, completions=conv, extra=1)
        await fn.aclose()
        return first, second

    first, second = asyncio.run(go())
    assert first == [0.0] and second == [0.0, 1.0] and len(calls) == 3


def test_missing_reward_is_an_error(live_server):
    app = FastAPI()

    @app.post("/v1/score")
    async def score() -> dict:
        body = ok_body(2)
        body["results"][1]["reward"] = None
        return body

    srv = live_server(app).start(ready_path=None)
    with MorlaifClient(srv.url, retry=FAST) as c, pytest.raises(APIStatusError, match="without a reward"):
        c.rewards(["p", "q"], ["a", "b"])


def test_remote_reward_pins_versions_and_rescores_when_they_change(live_server, tmp_path):
    """Rewards of a batch come from one version set: a pinned request that meets a swap is rescored on the new."""
    app = FastAPI()
    state = {"version": "v1"}
    seen: list[dict | None] = []

    @app.post("/v1/score")
    async def score(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append(body.get("expected_versions"))
        expected = (body.get("expected_versions") or {}).get("helpfulness")
        if expected is not None and expected != state["version"]:
            err = {"error": {"message": "helpfulness v1 is not loaded", "type": "conflict", "code": "x"}}
            return JSONResponse(err, status_code=409)
        out = ok_body(len(body["items"]))
        out["versions"] = {"helpfulness": state["version"]}
        assert body["scalarizer"] == {"name": "linear", "weights": {"helpfulness": 2.0}, "params": {}}
        return JSONResponse(out)

    srv = live_server(app).start(ready_path=None)
    weights = tmp_path / "weights.json"
    weights.write_text('{"name": "linear", "weights": {"helpfulness": 2.0}}')
    reward = RemoteReward(srv.url, api_key="k", weights_file=weights, retry=FAST)
    assert reward.__name__.startswith("morlaif_linear_") and "k" not in repr(reward)  # a name per configuration
    logged: list[tuple[str, float]] = []

    async def go() -> list[list[float]]:
        out = [await reward(["p", "q", "r"], ["a", "b", "c"], log_metric=lambda k, v: logged.append((k, v)))]
        state["version"] = "v2"  # an admin swaps the adapter between two batches
        out.append(await reward(["p"], ["a"]))
        out.append(await reward(["p"], ["a"]))
        await reward.aclose()
        return out

    assert asyncio.run(go()) == [[0.0, 1.0, 2.0], [0.0], [0.0]]
    assert logged == [("morlaif/helpfulness", 1.0)]
    # first unpinned, then pinned to v1 (409), rescored unpinned on v2, then pinned to v2
    assert seen == [None, {"helpfulness": "v1"}, None, {"helpfulness": "v2"}]
    assert reward.versions == {"helpfulness": "v2"}


def test_the_error_keeps_the_field_the_server_named(live_server):
    """A 422 keeps the error body's `param` on the exception and, when the message does not name it, in str()."""
    app = FastAPI()

    @app.post("/v1/score")
    async def score() -> JSONResponse:
        err = {"message": "is not a string", "type": "invalid_request_error", "code": "invalid_request",
               "param": "items[0].response"}  # fmt: skip
        return JSONResponse({"error": err}, status_code=422)

    srv = live_server(app).start(ready_path=None)
    with MorlaifClient(srv.url, retry=FAST) as c, pytest.raises(APIStatusError) as e:
        c.rewards(["p"], ["a"])
    assert e.value.status_code == 422 and e.value.param == "items[0].response" and e.value.code == "invalid_request"
    assert str(e.value) == "HTTP 422 (invalid_request_error): is not a string (param: items[0].response)"


def test_the_pm_servers_errors_name_the_field(live_server, tiny_encoder_dir, tmp_path):
    """The PM server's own 4xx through the client: `param` names the field, which str() does not repeat."""
    from pm_server.serving.api import create_app
    from pm_server.serving.config import ServerSettings

    rules = tmp_path / "rules.json"
    rules.write_text('[{"name": "says_good", "kind": "regex", "pattern": "good"}]')
    settings = ServerSettings(
        base_model=str(tiny_encoder_dir), adapter_root=tmp_path / "none", rules_file=rules, insecure_dev=True
    )
    srv = live_server(create_app(settings)).start()
    with MorlaifClient(srv.url, retry=FAST) as c:
        with pytest.raises(APIStatusError) as e:  # longer than the server's max_text_chars
            c.rewards(["p"], ["r" * (settings.max_text_chars + 1)])
        assert e.value.status_code == 400 and e.value.param == "items[0].response"
        assert str(e.value).count("items[0].response") == 1
        with pytest.raises(APIStatusError) as e:  # a body the client's own models would refuse: the server's 422
            c._request_json("POST", "/v1/score", ScoreResponse, {"items": [{"prompt": "p"}]})
        assert e.value.status_code == 422 and e.value.param == "items.0" and "(param:" not in str(e.value)


def test_pinned_scorer_pins_rescores_and_leaves_the_pin_to_the_caller(live_server, caplog):
    """`PinnedScorer`, the contract PPOTrainer and RemoteReward share: pin, rescore on the 409 of a swap, log both."""
    app = FastAPI()
    state = {"version": "v1"}
    seen: list[dict | None] = []

    @app.post("/v1/score")
    async def score(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append(body.get("expected_versions"))
        if body.get("expected_versions", {"h": state["version"]})["h"] != state["version"]:
            err = {"message": "swapped", "type": "conflict_error", "code": "version_not_loaded"}
            return JSONResponse({"error": err}, status_code=409)
        return JSONResponse({**ok_body(len(body["items"])), "versions": {"h": state["version"]}})

    srv = live_server(app).start(ready_path=None)
    log = logging.getLogger("a_trainer")
    with MorlaifClient(srv.url, retry=FAST) as c, caplog.at_level(logging.INFO, logger="a_trainer"):
        scorer = PinnedScorer(c, logger=log)
        assert scorer.score(["p"], ["a"], pin=False).versions == {"h": "v1"} and scorer.versions is None
        scorer.score(["p"], ["a"])
        assert scorer.versions == {"h": "v1"}
        state["version"] = "v2"
        assert scorer.score(["p"], ["a"], pin=False).versions == {"h": "v2"} and scorer.versions == {"h": "v1"}
        scorer.pin({"h": "v2"})
        scorer.score(["p"], ["a"])
        scorer.unpin()
        assert scorer.versions is None
    assert seen == [None, None, {"h": "v1"}, None, {"h": "v2"}]
    assert [(r.name, r.levelname) for r in caplog.records] == [
        ("a_trainer", "INFO"), ("a_trainer", "WARNING"), ("a_trainer", "INFO")
    ]  # fmt: skip
    assert caplog.records[0].getMessage() == "rewards pinned to adapter versions {'h': 'v1'}"
    assert "adapter versions changed" in caplog.records[1].getMessage() and "swapped" in caplog.records[1].getMessage()
