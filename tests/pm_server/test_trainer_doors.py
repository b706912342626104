"""One conversation, one reward, through every door a trainer uses; and the faults that must never break a reward.

A real server on loopback (tiny encoder, random adapters, float32) and the real client, RemoteReward and veRL
function. Peers' own code (OpenRLHF, TRL, veRL) calling these doors: tests/peers/.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import pickle

import httpx
import pytest
from dialogue import CHATML, HISTORY, chatml
from dialogue import RESPONSE as RESPONSE_TEXT
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from morlaif.client import AsyncMorlaifClient, MorlaifClient, RemoteReward, RetryPolicy, SyncRemoteReward
from morlaif.errors import APIStatusError, InvalidInputError
from pm_server.serving.api import create_app
from pm_server.serving.config import ServerSettings

API_KEY = "score-key-0123456789"
ADMIN_KEY = "admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}

RESPONSE = {"role": "assistant", "content": RESPONSE_TEXT}


def start(live_server, base_dir, root, **overrides):
    settings = ServerSettings(
        base_model=str(base_dir), adapter_root=root, api_key=API_KEY, admin_key=ADMIN_KEY, **overrides
    )
    return live_server(create_app(settings)).start()


@pytest.fixture(scope="module")
def server(module_live_server, tiny_encoder_dir, encoder_root):
    return start(module_live_server, tiny_encoder_dir, encoder_root, served_model_name=["my-rm"])


def call(reward: RemoteReward, **kwargs) -> list[float]:
    """One TRL-style call on a fresh event loop, closing the reward's connections on that loop."""

    async def go() -> list[float]:
        try:
            return await reward(**kwargs)
        finally:
            await reward.aclose()

    return asyncio.run(go())


def post(server, path, body, headers=AUTH):
    return httpx.post(server.url + path, json=body, headers=headers, timeout=60)


def default_reward(server, messages: list[dict]) -> float:
    """The reward /v1/score gives a conversation (as messages) under the server's default scalarizer."""
    spec = httpx.get(server.url + "/v1/scalarizers", headers=AUTH).json()["default"]
    r = post(server, "/v1/score", {"items": [{"messages": messages}], "scalarizer": spec})
    assert r.status_code == 200, r.text
    return r.json()["results"][0]["reward"]


def test_one_conversation_one_reward_through_every_door(server, monkeypatch):
    want = default_reward(server, [*HISTORY, RESPONSE])
    prompt = chatml(HISTORY)
    # OpenRLHF: the policy's decoded sequence, end-of-turn and any padding
    for n in (0, 1, 4, 16):
        query = prompt + "Twelve.<|im_end|>" + "<|endoftext|>" * n
        body = post(server, "/get_reward", {"query": [query], "prompts": [prompt], "labels": [""]}).json()
        assert body["rewards"] == [pytest.approx(want, abs=1e-6)], n
        assert body["info"] == [{"template": "chatml", "split": "prefix", "stripped": 1 + n, "replaced_text": False}]
        assert body["scores"] == [pytest.approx(1 / (1 + math.exp(-want)))]
    # TRL: conversational prompts and completions
    spec = httpx.get(server.url + "/v1/scalarizers", headers=AUTH).json()["default"]
    reward = RemoteReward(server.url, api_key=API_KEY, scalarizer=spec["name"], weights=spec["weights"])
    got = call(reward, prompts=[HISTORY], completions=[[RESPONSE]])
    assert got == [pytest.approx(want, abs=1e-6)]
    sync = SyncRemoteReward(server.url, api_key=API_KEY, scalarizer=spec["name"], weights=spec["weights"])
    assert sync(prompts=[HISTORY], completions=[[RESPONSE]]) == [pytest.approx(want, abs=1e-6)]
    sync.close()
    # vLLM-style /classify: the templated text, or the conversation as messages
    text = chatml([*HISTORY, RESPONSE], generation=False)
    for body in ({"input": text}, {"input": [text]}, {"messages": [*HISTORY, RESPONSE]}):
        out = post(server, "/classify", {"model": "my-rm", "use_activation": False, **body}).json()
        assert out["object"] == "list" and out["data"][0]["probs"] == [pytest.approx(want, abs=1e-6)], out
    out = post(server, "/classify", {"input": text}).json()  # vLLM's default activation: sigmoid
    assert out["model"] == "reward" and out["data"][0]["probs"] == [pytest.approx(1 / (1 + math.exp(-want)))]
    # veRL: only the response, the prompt through extra_info
    from morlaif.integrations import verl

    monkeypatch.setenv("MORLAIF_API_KEY", API_KEY)
    got = verl.compute_score("hh", "Twelve.", "", {"prompt": HISTORY}, url=server.url)
    assert got["score"] == pytest.approx(want, abs=1e-6) and set(got) > {"score", "helpfulness"}
    verl.close()

    async def via_async() -> dict:
        try:
            return await verl.compute_score_async("hh", "Twelve.", "", {"prompt": HISTORY}, url=server.url)
        finally:
            await verl.aclose()

    got = asyncio.run(via_async())
    assert got["score"] == pytest.approx(want, abs=1e-6)


def test_openai_message_forms(server):
    plain = [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": "Sunny."}]
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Sunny."}]},
    ]  # fmt: skip
    r = post(server, "/v1/score", {"items": [{"messages": plain}, {"messages": parts}]}).json()
    a, b = r["results"]
    assert a["scores"] == pytest.approx(b["scores"]) and (a["dropped_parts"], b["dropped_parts"]) == (0, 1)
    tools = [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
    ]  # fmt: skip
    r = post(server, "/v1/score", {"items": [{"messages": tools}]})
    assert r.status_code == 200, r.text
    rendered = post(server, "/v1/score", {"items": [{
        "prompt": 'System: Use tools.\n\nHuman: Weather in Paris?\n\nAssistant: Tool call: weather({"city": "Paris"})'
                  "\n\nTool: sunny", "response": "Sunny."}]}).json()  # fmt: skip
    assert r.json()["results"][0]["scores"] == pytest.approx(rendered["results"][0]["scores"])
    bad = post(server, "/v1/score", {"items": [{"messages": [{"role": "user", "content": [{"text": "x"}]},
                                                             {"role": "assistant", "content": "y"}]}]})  # fmt: skip
    assert bad.status_code == 422 and "messages" in bad.json()["error"]["param"]


def test_get_reward_never_fails_a_batch_for_one_query(server):
    def alone(prompt: str, response: str) -> float:
        spec = httpx.get(server.url + "/v1/scalarizers", headers=AUTH).json()["default"]
        body = {"items": [{"prompt": prompt, "response": response}], "scalarizer": spec}
        return post(server, "/v1/score", body).json()["results"][0]["reward"]

    long_prompt = "Here is a long document the policy saw only the end of. " * 6 + "Summarise it."
    queries = ["2 + 2? 4", long_prompt[-60:] + " A summary.", "unrelated text", "Hi! Hello."]
    prompts = ["2 + 2 ?", long_prompt, "the prompt", "Hi!"]
    body = post(server, "/get_reward", {"query": queries, "prompts": prompts}).json()
    assert [i["split"] for i in body["info"]] == ["fuzzy", "fuzzy", "unmatched", "prefix"]
    assert body["rewards"] == pytest.approx(
        [alone("2 + 2 ?", " 4"), alone(long_prompt, " A summary."), alone("the prompt", "unrelated text"),
         alone("Hi!", " Hello.")], abs=1e-6,
    )  # fmt: skip
    # OpenRLHF 0.9-0.11.1 send [] to every server but the first; and a lone surrogate is replaced, not refused
    assert post(server, "/get_reward", {"query": [], "prompts": [], "labels": []}).json()["rewards"] == []
    r = httpx.post(server.url + "/get_reward", headers={**AUTH, "content-type": "application/json"},
                   content=b'{"query": ["Hi \\ud800 there"], "prompts": ["Hi"]}')  # fmt: skip
    assert r.status_code == 200 and r.json()["info"][0]["replaced_text"] is True
    assert r.json()["rewards"] == [pytest.approx(alone("Hi", " \ufffd there"), abs=1e-6)]
    r = httpx.post(server.url + "/get_reward", headers={**AUTH, "content-type": "application/json"},
                   content=b'{"query": ["x"], "prompts": ["\\ud800"]}')  # fmt: skip
    assert r.status_code == 200 and r.json()["info"][0]["replaced_text"] is True
    # the client's get_reward (OpenRLHF's file mode) replaces it the same way, rather than refuse it
    with MorlaifClient(server.url, api_key=API_KEY) as c:
        res = c.get_reward(["Hi \ud800 there"], ["Hi"], ["\ud800"])
    assert res.info[0].replaced_text and res.rewards == [pytest.approx(alone("Hi", " \ufffd there"), abs=1e-6)]


def test_a_whole_rollout_in_one_request(live_server, tiny_encoder_dir, encoder_root):
    small = start(live_server, tiny_encoder_dir, encoder_root, max_items=64)
    n = 1000  # OpenRLHF 0.6-0.9 post a whole rollout batch; the server scores it in chunks of max_items
    queries = [f"Question {i}? Answer {i % 7}." for i in range(n)]
    prompts = [f"Question {i}?" for i in range(n)]
    body = post(small, "/get_reward", {"query": queries, "prompts": prompts}).json()
    assert len(body["rewards"]) == n and all(math.isfinite(r) for r in body["rewards"])
    some = post(small, "/get_reward", {"query": queries[::97], "prompts": prompts[::97]}).json()["rewards"]
    assert body["rewards"][::97] == pytest.approx(some, abs=1e-6)
    # /v1/score names the limit with the status the docs give
    r = post(small, "/v1/score", {"items": [{"prompt": "p", "response": "r"}] * 65})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_items"
    assert httpx.get(small.url + "/v1/principles", headers=AUTH).json()["limits"]["max_items"] == 64


def test_the_client_splits_by_the_servers_limits(live_server, tiny_encoder_dir, encoder_root):
    small = start(live_server, tiny_encoder_dir, encoder_root, max_items=8, max_request_bytes=4096)
    prompts = [f"Prompt number {i}: " + "x" * (40 * (i % 5)) for i in range(50)]
    responses = [f"Response {i}." for i in range(50)]
    with MorlaifClient(small.url, api_key=API_KEY) as c:
        res = c.score(prompts, responses, scalarizer="linear")
        assert c.server_limits is not None and c.server_limits.max_items == 8
        one_by_one = [
            c.score([p], [r], scalarizer="linear").results[0].reward for p, r in zip(prompts, responses, strict=True)
        ]
    assert res.usage.items == 50 and [r.reward for r in res.results] == pytest.approx(one_by_one, abs=1e-6)
    reward = RemoteReward(small.url, api_key=API_KEY)
    conv = [[{"role": "user", "content": p}] for p in prompts]
    comp = [[{"role": "assistant", "content": r}] for r in responses]
    assert call(reward, prompts=conv, completions=comp) == pytest.approx(one_by_one, abs=1e-6)


def test_a_split_batch_is_rescored_when_adapters_change_between_its_parts(live_server):
    app, seen = FastAPI(), []

    @app.get("/v1/principles")
    async def principles() -> dict:
        return {"base_model": "m", "base_config_hash": "h", "principles": [],
                "limits": {"max_items": 2, "max_request_bytes": 1 << 20, "max_text_chars": 1000}}  # fmt: skip

    @app.post("/v1/score")
    async def score(request: Request):
        body = await request.json()
        seen.append((len(body["items"]), body.get("expected_versions")))
        version = "v1" if len(seen) <= 2 else "v2"  # the adapter is swapped after the second request
        if body.get("expected_versions") and body["expected_versions"]["h"] != version:
            return JSONResponse({"error": {"message": "swapped", "type": "conflict_error", "code": "version_not_loaded",
                                           "param": "expected_versions.h"}}, status_code=409)  # fmt: skip
        n = len(body["items"])
        results = [{"scores": {"h": 1.0}, "raw_scores": {"h": 1.0}, "reward": 1.0, "tokens": 1, "truncated": False}]
        return {"principles": ["h"], "results": results * n, "versions": {"h": version}, "scalarizer": "linear",
                "usage": {"items": n, "input_tokens": n, "forward_rows": n}}  # fmt: skip

    srv = live_server(app).start(ready_path=None)
    with MorlaifClient(srv.url, retry=RetryPolicy(max_retries=0)) as c:
        res = c.score(["a", "b", "c", "d", "e"], ["1", "2", "3", "4", "5"], scalarizer="linear")
    assert res.versions == {"h": "v2"} and res.usage.items == 5
    # parts 2 and 3 are pinned to the first part's versions; part 3's 409 starts the batch over on the new ones
    assert seen == [(2, None), (2, {"h": "v1"}), (1, {"h": "v1"}), (2, None), (2, {"h": "v2"}), (1, {"h": "v2"})]


def test_text_that_is_not_unicode_is_a_4xx_naming_the_field(server):
    def raw(path: str, body: str) -> httpx.Response:
        return httpx.post(server.url + path, content=body.encode(), timeout=30,
                          headers={**AUTH, "content-type": "application/json"})  # fmt: skip

    bad = "\\ud800"
    for path, body, param in [
        ("/v1/score", f'{{"items": [{{"prompt": "{bad}", "response": "r"}}]}}', "items.0.prompt"),
        ("/v1/score", f'{{"items": [{{"prompt": "p", "response": "x{bad}"}}]}}', "items.0.response"),
        ("/v1/score", f'{{"items": [{{"messages": [{{"role": "assistant", "content": "{bad}"}}]}}]}}',
         "items.0.messages.0.content"),
        ("/v1/score", f'{{"items": [{{"prompt": "p", "response": "r"}}], "principles": ["{bad}"]}}', "principles.0"),
        ("/v1/score", f'{{"items": [{{"prompt": "p", "response": "r"}}], "scalarizer": {{"name": "{bad}"}}}}',
         "scalarizer.name"),
        ("/v1/score",
         f'{{"items": [{{"prompt": "p", "response": "r"}}], "scalarizer": {{"params": {{"t": "{bad}"}}}}}}',
         "scalarizer.params"),
        ("/v1/compare", f'{{"prompt": "p", "response_a": "{bad}", "response_b": "b"}}', "response_a"),
        ("/v1/scalarize", f'{{"scores": [{{"{bad}": 1.0}}]}}', "scores.0"),
        ("/classify", f'{{"input": ["ok", "{bad}"]}}', "input.1"),
    ]:  # fmt: skip
        r = raw(path, body)
        assert r.status_code == 422, (path, r.text)
        err = r.json()["error"]
        assert err["param"] == param and "surrogate" in err["message"], (path, err)
    # the client never sends it, and names the item
    with MorlaifClient(server.url, api_key=API_KEY) as c, pytest.raises(InvalidInputError) as e:
        c.rewards(["p", "q"], ["fine", "bad \ud800"])
    assert e.value.field == "items[1].response" and "surrogate" in str(e.value)


def test_a_reward_is_never_non_finite(server, live_server):
    tiny_t = {"name": "soft_max_min", "params": {"temperature": 1e-320}}
    r = post(server, "/v1/score", {"items": [{"prompt": "p", "response": "r"}], "scalarizer": tiny_t})
    assert r.status_code == 400 and r.json()["error"]["param"] == "scalarizer"
    huge = {"name": "linear", "weights": {"a": 1e308, "b": 1e308}}
    r = post(server, "/v1/scalarize", {"scores": [{"a": 1.0, "b": 2.0}], "scalarizer": huge})
    assert r.status_code == 400 and "non-finite" in r.json()["error"]["message"]
    # a server that answers NaN or Infinity: the client raises its typed error instead of handing it on
    app = FastAPI()

    @app.post("/v1/score")
    async def score() -> Response:
        body = ('{"principles": ["h"], "results": [{"scores": {"h": 1.0}, "raw_scores": {"h": 1.0}, '
                '"reward": NaN, "tokens": 1, "truncated": false}], "versions": {"h": "v"}, "scalarizer": "linear", '
                '"usage": {"items": 1, "input_tokens": 1, "forward_rows": 1}}')  # fmt: skip
        return Response(body, media_type="application/json")

    srv = live_server(app).start(ready_path=None)
    with MorlaifClient(srv.url) as c, pytest.raises(APIStatusError) as e:
        c.rewards(["p"], ["r"])
    assert e.value.error_type == "protocol_error" and "non-finite" in str(e.value)

    async def via_async() -> None:
        async with AsyncMorlaifClient(srv.url) as c:
            await c.rewards(["p"], ["r"])

    with pytest.raises(APIStatusError, match="non-finite"):
        asyncio.run(via_async())


def test_keys_trusted_networks_and_loopback_only_insecure_dev(live_server, tiny_encoder_dir, encoder_root):
    keyed = start(live_server, tiny_encoder_dir, encoder_root)
    body = {"query": ["Hi there"], "prompts": ["Hi"]}
    assert post(keyed, "/get_reward", body, headers={}).status_code == 401
    trusted = start(live_server, tiny_encoder_dir, encoder_root, trusted_networks=["127.0.0.0/8"])
    assert post(trusted, "/get_reward", body, headers={}).status_code == 200
    assert post(trusted, "/v1/adapters", {"name": "helpfulness"}, headers={}).status_code == 401  # admin: keyed
    other = start(live_server, tiny_encoder_dir, encoder_root, trusted_networks=["10.0.0.0/8"])
    assert post(other, "/get_reward", body, headers={}).status_code == 401
    with pytest.raises(ValueError, match="loopback only"):
        ServerSettings(base_model=str(tiny_encoder_dir), insecure_dev=True, host="0.0.0.0")
    assert ServerSettings(base_model=str(tiny_encoder_dir), insecure_dev=True, host="::1").insecure_dev
    from typer.testing import CliRunner

    from morlaif_cli.main import app

    r = CliRunner().invoke(app, ["serve", "--insecure-dev", "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "loopback only" in r.output


def test_remote_reward_in_every_trl(server):
    reward = RemoteReward(server.url, api_key=API_KEY)
    # TRL < 1.14 asks inspect (1.0-1.13) or asyncio (0.27-0.29) about the instance itself; 1.14+ also __call__
    assert inspect.iscoroutinefunction(reward) and asyncio.iscoroutinefunction(reward)
    assert list(inspect.signature(reward).parameters) == ["prompts", "completions", "kwargs"]
    sync = SyncRemoteReward(server.url, api_key=API_KEY)
    assert not inspect.iscoroutinefunction(sync) and callable(sync)
    # picklable before and after the first call (TRL's async GRPO pickles reward functions into a worker)
    copy = pickle.loads(pickle.dumps(reward))

    async def first_call_then_pickle() -> tuple[list[float], bytes]:
        got = await reward(prompts=["p"], completions=["r"])
        data = pickle.dumps(reward)  # with its connection pool open
        await reward.aclose()
        return got, data

    first, data = asyncio.run(first_call_then_pickle())
    again = pickle.loads(data)
    assert again.versions == reward.versions and call(again, prompts=["p"], completions=["r"]) == first
    assert call(copy, prompts=["p"], completions=["r"]) == first
    sync_copy = pickle.loads(pickle.dumps(sync))
    assert sync_copy(prompts=["p"], completions=["r"]) == pytest.approx(first)
    sync_copy.close()
    assert "score-key" not in repr(reward)
    # one metric name per configuration
    names = {
        RemoteReward(server.url).__name__,
        RemoteReward(server.url, weights={"helpfulness": 1.0}).__name__,
        RemoteReward(server.url, weights={"helpfulness": 2.0}).__name__,
        RemoteReward(server.url, scalarizer="soft_max_min", params={"temperature": 0.5}).__name__,
    }
    assert len(names) == 4 and "morlaif_linear" in names
    assert RemoteReward(server.url, name="helpful_only").__name__ == "helpful_only"


def test_vllm_models_and_classify_errors(server):
    models = httpx.get(server.url + "/v1/models", headers=AUTH).json()
    ids = [m["id"] for m in models["data"]]
    assert models["object"] == "list" and ids[:2] == ["reward", "my-rm"] and "helpfulness" in ids
    one = post(server, "/classify", {"model": "helpfulness", "input": "Hi", "use_activation": False}).json()
    score = post(server, "/v1/score", {"items": [{"prompt": "", "response": "Hi"}], "principles": ["helpfulness"]})
    assert one["data"][0]["probs"] == [pytest.approx(score.json()["results"][0]["scores"]["helpfulness"])]
    r = post(server, "/classify", {"model": "/models/some-rm", "input": "Hi"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    assert "MORLAIF_SERVED_MODEL_NAME" in r.json()["error"]["message"]
    assert post(server, "/classify", {"input": "Hi", "messages": [RESPONSE]}).status_code == 422


def test_batch_invariance_is_reported_and_holds_in_float32(server):
    item = {"prompt": "How do I boil an egg?", "response": "Simmer it for nine minutes, then cool it."}
    others = [{"prompt": f"Tell me about topic {i} " * (i + 1), "response": "Sure. " * (3 * i + 1)} for i in range(6)]
    alone = post(server, "/v1/score", {"items": [item], "normalize": False}).json()["results"][0]["raw_scores"]
    mixed = post(server, "/v1/score", {"items": [*others, item], "normalize": False}).json()["results"][-1]
    assert max(abs(alone[k] - mixed["raw_scores"][k]) for k in alone) < 1e-4
    info = httpx.get(server.url + "/v1/principles", headers=AUTH).json()
    assert (info["dtype"], info["batch_invariant"]) == ("float32", True)


def test_score_cli_records_a_bad_record_and_goes_on(server, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from morlaif_cli.main import app

    monkeypatch.setenv("MORLAIF_API_KEY", API_KEY)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [json.dumps({"prompt": "a", "response": "b"}), '{"prompt": "a", "response": "bad \\ud800"}',
             "{not json", json.dumps({"prompt": "c", "response": "d"})]  # fmt: skip
    src.write_text("\n".join(lines) + "\n")
    for _ in range(2):  # resumed, it goes on past the bad records again (and scores nothing twice)
        r = CliRunner().invoke(app, ["score", str(src), str(out), "--url", server.url])
        assert r.exit_code == 2, r.output
        assert (
            f"{src}:2: response: contains a lone UTF-16 surrogate" in r.output and f"{src}:3: invalid JSON" in r.output
        )
        assert [json.loads(x)["prompt"] for x in out.read_text().splitlines()] == ["a", "c"]
        rejected = [json.loads(x) for x in (tmp_path / "out.jsonl.rejected.jsonl").read_text().splitlines()]
        assert [x["line"] for x in rejected] == [2, 3]


def test_the_operator_names_the_policys_tokenizer(live_server, tiny_encoder_dir, encoder_root, tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from pm_server.serving.service import policy_query_parser

    def save(path, template: str) -> str:
        tok = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")),
            eos_token="<|my_eos|>", pad_token="<|my_pad|>", unk_token="[UNK]",
        )  # fmt: skip
        tok.chat_template = template
        tok.save_pretrained(str(path))
        return str(path)

    server = start(live_server, tiny_encoder_dir, encoder_root, policy_tokenizer=save(tmp_path / "policy", CHATML))
    query = chatml(HISTORY) + "Twelve.<|my_eos|>" + "<|my_pad|>" * 3  # this policy's own end and pad tokens
    body = post(server, "/get_reward", {"query": [query]}).json()
    assert body["info"][0] == {"template": "chatml", "split": "template", "stripped": 4, "replaced_text": False}
    assert body["rewards"] == [pytest.approx(default_reward(server, [*HISTORY, RESPONSE]), abs=1e-6)]
    odd = save(tmp_path / "odd", "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    with pytest.raises(ValueError, match="none of the recognised ones; set policy_template"):
        policy_query_parser(odd)
    assert policy_query_parser(odd, "none").template == "none"


def test_a_forwarded_for_header_does_not_make_a_client_trusted(tiny_encoder_dir, tmp_path):
    """`morlaif serve` itself (uvicorn as it configures it): X-Forwarded-For from loopback is not a client address."""
    import os
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MORLAIF_API_KEY": API_KEY, "MORLAIF_ADMIN_KEY": ADMIN_KEY,
           "MORLAIF_TRUSTED_NETWORKS": "10.0.0.0/8"}  # fmt: skip
    cmd = [sys.executable, "-m", "morlaif", "serve", "--base", str(tiny_encoder_dir), "--adapter-root",
           str(tmp_path / "none"), "--port", str(port), "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        body = {"query": ["Hi there"], "prompts": ["Hi"]}
        assert httpx.post(url + "/get_reward", json=body, headers={"X-Forwarded-For": "10.0.0.5"}).status_code == 401
        assert httpx.post(url + "/get_reward", json=body, headers=AUTH).status_code == 200
    finally:
        proc.terminate()
        proc.wait(20)


def test_score_cli_goes_on_past_bytes_that_are_not_utf8_and_overlong_records(server, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from morlaif_cli.main import app

    monkeypatch.setenv("MORLAIF_API_KEY", API_KEY)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    overlong = json.dumps({"prompt": "p" * 70000, "response": "r"}).encode()
    src.write_bytes(b'{"prompt": "a", "response": "b"}\n\xff\n' + overlong + b'\n{"prompt": "c", "response": "d"}\n')
    r = CliRunner().invoke(app, ["score", str(src), str(out), "--url", server.url])
    assert r.exit_code == 2, r.output
    assert f"{src}:2: not UTF-8 text (byte 0xff" in r.output
    assert f"{src}:3: prompt has 70000 characters; the server takes 65536" in r.output
    assert [json.loads(x)["prompt"] for x in out.read_text().splitlines()] == ["a", "c"]
    rejected = [json.loads(x) for x in (tmp_path / "out.jsonl.rejected.jsonl").read_text().splitlines()]
    assert [x["line"] for x in rejected] == [2, 3]


def test_admin_path_and_client_weights_with_invalid_text(server, monkeypatch):
    monkeypatch.setenv("MORLAIF_API_KEY", API_KEY)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"}
    r = httpx.post(server.url + "/v1/adapters", headers=admin, content=b'{"name": "helpfulness", "path": "x\\ud800"}')
    assert r.status_code == 422 and r.json()["error"]["param"] == "path"
    with MorlaifClient(server.url, api_key=API_KEY) as c, pytest.raises(InvalidInputError) as e:
        c.rewards(["p"], ["r"], weights={"brevity\ud800": 1.0})
    assert e.value.field == "scalarizer.weights"
    from morlaif.integrations.verl import compute_score

    with pytest.raises(InvalidInputError) as e:
        compute_score("hh", "bad \ud800", "", {"prompt": HISTORY}, url=server.url)
    assert e.value.field == "items[0].messages.4.content"
    from morlaif.integrations import verl

    verl.close()
