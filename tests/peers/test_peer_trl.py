"""TRL 1.16's own GRPO loop (its reward dispatch, `_calculate_rewards`) with `RemoteReward` on a conversational
dataset that has system turns and earlier turns, through the example script; and the forms older TRLs call."""

from __future__ import annotations

import functools
import inspect
import json
import math

import pytest
from dialogue import load_example

# a chat template for the tiny policy (its 16-word vocabulary reads the markers as unknown words; TRL applies it)
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


@pytest.fixture
def chat_lm_dir(tmp_path, tiny_lm_dir):
    import shutil

    from transformers import AutoTokenizer

    out = tmp_path / "chat-lm"
    shutil.copytree(tiny_lm_dir, out)
    tok = AutoTokenizer.from_pretrained(str(out))
    tok.chat_template = TEMPLATE
    tok.save_pretrained(str(out))
    return out


@pytest.fixture
def recording_rule_server(live_server, tiny_encoder_dir, tmp_path):
    """A PM server whose one principle is a rule (1 when the response says "good"), recording /v1/score bodies."""
    from pm_server.serving.api import create_app
    from pm_server.serving.config import ServerSettings

    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"name": "says_good", "kind": "regex", "pattern": r"\bgood\b"}]))
    settings = ServerSettings(base_model=str(tiny_encoder_dir), adapter_root=tmp_path / "none", rules_file=rules,
                              insecure_dev=True)  # fmt: skip
    app = create_app(settings)
    seen: list[dict] = []

    @app.middleware("http")
    async def record(request, call_next):
        if request.url.path == "/v1/score":
            seen.append(json.loads(await request.body()))
        return await call_next(request)

    server = live_server(app).start()
    server.seen = seen
    return server


def test_two_conversational_grpo_steps(recording_rule_server, chat_lm_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    words = ("good", "bad", "red", "blue", "big", "small")
    dialogues = [[{"role": "user", "content": f"cat {w}"}, {"role": "assistant", "content": "dog"},
                  {"role": "user", "content": f"{w} sun"}] for w in words]  # fmt: skip
    prompts.write_text("".join(json.dumps({"messages": d}) + "\n" for d in dialogues))
    trainer = load_example("grpo_remote_reward").main(
        [
            "--url", recording_rule_server.url, "--model", str(chat_lm_dir), "--prompts", str(prompts),
            "--conversational", "--system", "be kind", "--steps", "2", "--batch-size", "4",
            "--num-generations", "4", "--max-completion-length", "6", "--num-prompts", "6",
            "--out", str(tmp_path / "grpo"),
        ]
    )  # fmt: skip
    steps = [h for h in trainer.state.log_history if "rewards/morlaif_linear/mean" in h]
    assert [h["step"] for h in steps] == [1, 2]
    for h in steps:
        assert math.isclose(h["rewards/morlaif_linear/mean"], h["morlaif/says_good"], abs_tol=1e-6)
        assert not math.isnan(h["loss"])
    # the server saw each completion as the conversation it continues: system turn, earlier turns, then it
    items = [item for body in recording_rule_server.seen for item in body["items"]]
    assert len(items) == 2 * 4 and all("messages" in i for i in items)  # two steps of 4 completions
    for item in items:
        roles = [m["role"] for m in item["messages"]]
        assert roles == ["system", "user", "assistant", "user", "assistant"], roles
        assert item["messages"][0]["content"] == "be kind" and item["messages"][2]["content"] == "dog"


def test_the_forms_every_trl_calls_correctly():
    from trl.trainer.utils import get_callable_name, is_async_callable

    from morlaif.client import RemoteReward, SyncRemoteReward

    reward = RemoteReward("http://127.0.0.1:1", weights={"helpfulness": 1.0})
    assert is_async_callable(reward) and get_callable_name(reward) == reward.__name__ != "morlaif_linear"
    # TRL 1.0-1.13 (inspect), 0.27-0.29 (asyncio) ask about the instance itself
    import asyncio

    assert inspect.iscoroutinefunction(reward) and asyncio.iscoroutinefunction(reward)
    sync = SyncRemoteReward("http://127.0.0.1:1")
    assert not is_async_callable(sync) and get_callable_name(sync) == "morlaif_linear"
    # a partial of either keeps its kind, as TRL unwraps partials
    assert is_async_callable(functools.partial(reward)) and not is_async_callable(functools.partial(sync))
