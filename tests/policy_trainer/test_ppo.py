"""PPO on a tiny random causal LM against a real PM server on loopback serving a rule principle."""

from __future__ import annotations

import logging
import statistics

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from morlaif.client import MorlaifClient
from policy_trainer.config import GenerationConfig, PPOConfig, RewardConfig
from policy_trainer.ppo import PPOTrainer
from rigs.tiny_lm import WORDS, tiny_lm


def run(server_url: str, kl_coef: float, steps: int, seed: int = 0) -> list[dict[str, float]]:
    torch.manual_seed(seed)
    lm, tok = tiny_lm(seed)
    prompts = [" ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(3)) for i in range(16)]
    with MorlaifClient(server_url, api_key=None) as client:
        trainer = PPOTrainer(
            lm,
            tok,
            client,
            config=PPOConfig(
                batch_size=16,
                mini_batch_size=8,
                learning_rate=3e-3,
                init_kl_coef=kl_coef,
                adaptive_kl=False,
                normalize_rewards=False,
            ),  # fmt: skip
            generation=GenerationConfig(max_new_tokens=6),
            reward=RewardConfig(url=server_url, weights={"says_good": 1.0}),
        )
        return [trainer.step(prompts) for _ in range(steps)]


def test_ppo_raises_the_reward_while_kl_stays_bounded(rule_server):
    hist = run(rule_server.url, kl_coef=0.05, steps=40)
    first = statistics.mean(h["reward"] for h in hist[:5])
    last = statistics.mean(h["reward"] for h in hist[-10:])
    assert first < 0.45 and last > first + 0.35, [round(h["reward"], 2) for h in hist]
    assert max(h["kl"] for h in hist) < 20.0
    assert all(h["reward_wait_seconds"] >= 0 and "score/says_good" in h for h in hist)


def test_a_large_kl_penalty_keeps_the_policy_near_the_reference(rule_server):
    hist = run(rule_server.url, kl_coef=5.0, steps=40)
    first = statistics.mean(h["reward"] for h in hist[:5])
    last = statistics.mean(h["reward"] for h in hist[-10:])
    assert last < first + 0.3, [round(h["reward"], 2) for h in hist]
    assert statistics.mean(h["kl"] for h in hist[-5:]) < 1.0


def test_a_step_scores_on_the_pinned_versions_and_rescores_after_a_swap(live_server, caplog):
    """The trainer's rewards come from one adapter version set: pinned after a step, kept in its state, and when
    an admin swaps the adapter, the next step's batch is rescored on the new version and the pin follows."""
    app, state, seen = FastAPI(), {"version": "v1"}, []

    @app.post("/v1/score")
    async def score(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append(body.get("expected_versions"))
        if body.get("expected_versions", {"says_good": state["version"]})["says_good"] != state["version"]:
            err = {"message": "swapped", "type": "conflict_error", "code": "version_not_loaded"}
            return JSONResponse({"error": err}, status_code=409)
        n = len(body["items"])
        result = {"scores": {"says_good": 0.5}, "raw_scores": {"says_good": 0.5}, "reward": 0.5, "tokens": 1,
                  "truncated": False}  # fmt: skip
        return JSONResponse({"principles": ["says_good"], "results": [result] * n, "scalarizer": "linear",
                             "versions": {"says_good": state["version"]},
                             "usage": {"items": n, "input_tokens": n, "forward_rows": n}})  # fmt: skip

    srv = live_server(app).start(ready_path=None)
    lm, tok = tiny_lm(0)
    with MorlaifClient(srv.url, api_key=None) as client, caplog.at_level(logging.INFO, logger="policy_trainer.ppo"):
        config = PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1)
        generation, reward = GenerationConfig(max_new_tokens=2), RewardConfig(url=srv.url)
        trainer = PPOTrainer(lm, tok, client, config=config, generation=generation, reward=reward)
        trainer.step(["a", "b"])
        assert trainer.pinned_versions == trainer.state_dict()["pinned_versions"] == {"says_good": "v1"}
        state["version"] = "v2"
        trainer.step(["a", "b"])
    assert trainer.pinned_versions == {"says_good": "v2"}
    assert seen == [None, {"says_good": "v1"}, None]
    assert [r.getMessage().split(" (")[0] for r in caplog.records if r.name == "policy_trainer.ppo"] == [
        "rewards pinned to adapter versions {'says_good': 'v1'}",
        "the PM server's adapter versions changed",
        "rewards pinned to adapter versions {'says_good': 'v2'}",
    ]
