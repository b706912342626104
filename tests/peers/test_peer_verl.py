"""veRL 0.9's own reward managers calling morlaif's `compute_score`, and its /classify reward-model client.

Real veRL code throughout: the custom reward function is loaded by `get_custom_reward_fn` from the config keys
a user writes (with `reward_kwargs`), called by the legacy `NaiveRewardManager` (sync) and by the reward-loop
`NaiveRewardManager` that veRL 0.9 trains with (async), on a real `DataProto`; the discriminative reward model
path posts to `/classify` through `RewardLoopWorker.compute_score_disrm`. Stand-ins: the policy's tokenizer
(one token per character) and the reward worker's Ray actor (its method is called directly).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from peer_helpers import API_KEY, CHATML, HISTORY, RESPONSE, conversation_reward, need

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "verl_reward.py"


class CharTokenizer:
    eos_token = "<|im_end|>"
    bos_token = None

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(int(i)) for i in ids if int(i) > 0)


def batch(prompt_messages: list[dict], response: str):
    import numpy as np
    import torch
    from verl import DataProto

    prompt = torch.tensor([[0, ord("P")]])
    resp = torch.tensor([[ord(c) for c in response] + [0, 0]])
    mask = torch.tensor([[0, 1] + [1] * len(response) + [0, 0]])
    return DataProto.from_dict(
        tensors={
            "prompts": prompt,
            "responses": resp,
            "attention_mask": mask,
            "input_ids": torch.cat([prompt, resp], 1),
        },
        non_tensors={
            "data_source": np.array(["hh"], dtype=object),
            "reward_model": np.array([{"ground_truth": "", "style": "model"}], dtype=object),
            "extra_info": np.array([{"index": 0, "prompt": prompt_messages}], dtype=object),
            "raw_prompt": np.array([prompt_messages], dtype=object),
        },
    )


def config(name: str, url: str):
    from omegaconf import OmegaConf

    return OmegaConf.create({"reward": {"custom_reward_function": {
        "path": str(EXAMPLE), "name": name, "reward_kwargs": {"url": url}}}})  # fmt: skip


def test_compute_score_under_both_reward_managers(start_server, monkeypatch):
    need("verl.workers.reward_manager.naive")
    need("verl.experimental.reward_loop.reward_manager.naive")
    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager as LoopManager
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.workers.reward_manager.naive import NaiveRewardManager as LegacyManager

    from morlaif.integrations import verl as integration

    server = start_server()
    monkeypatch.setenv("MORLAIF_API_KEY", API_KEY)
    want = conversation_reward(server, [*HISTORY, {"role": "assistant", "content": RESPONSE}])
    data = batch(HISTORY, RESPONSE)

    sync_fn = get_custom_reward_fn(config("compute_score", server.url))
    out = LegacyManager(CharTokenizer(), 0, compute_score=sync_fn)(data, return_dict=True)
    n = len(RESPONSE)
    assert out["reward_tensor"][0, n - 1].item() == pytest.approx(want, abs=1e-5)  # at the last response token
    assert out["reward_tensor"].sum().item() == pytest.approx(want, abs=1e-5)
    assert out["reward_extra_info"]["score"] == [pytest.approx(want, abs=1e-6)]
    assert {"helpfulness", "harmlessness"} <= set(out["reward_extra_info"])
    integration.close()

    async def loop() -> dict:
        manager = LoopManager(None, CharTokenizer(), get_custom_reward_fn(config("compute_score_async", server.url)))
        assert manager.is_async_reward_score
        try:
            return await manager.run_single(data)
        finally:
            await integration.aclose()

    got = asyncio.run(loop())
    assert got["reward_score"] == pytest.approx(want, abs=1e-6)
    assert got["reward_extra_info"]["helpfulness"] == pytest.approx(
        conversation_scores(server)["helpfulness"], abs=1e-6
    )


def conversation_scores(server) -> dict:
    import httpx
    from peer_helpers import AUTH

    messages = [*HISTORY, {"role": "assistant", "content": RESPONSE}]
    return httpx.post(server.url + "/v1/score", headers=AUTH, json={"items": [{"messages": messages}]}).json()[
        "results"
    ][0]["scores"]


def test_without_the_prompt_the_error_says_how_to_pass_it(start_server, monkeypatch):
    from morlaif.errors import InvalidInputError
    from morlaif.integrations.verl import close, compute_score

    server = start_server()
    monkeypatch.setenv("MORLAIF_API_KEY", API_KEY)
    with pytest.raises(InvalidInputError) as e:
        compute_score("hh", RESPONSE, "", {"index": 0}, url=server.url)
    assert e.value.field == "extra_info.prompt" and "prepare_dataset" in str(e.value)
    close()


def test_the_discriminative_reward_model_path_posts_classify(start_server):
    need("verl.experimental.reward_loop.reward_loop")
    from omegaconf import OmegaConf
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    # veRL posts the reward model's path as `model` and sends no key: the operator names it and trusts the network
    server = start_server(trusted_networks=["127.0.0.0/8"], served_model_name=["/models/my-rm"])
    rm_tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    rm_tok.chat_template = CHATML
    worker = object.__new__(RewardLoopWorker)  # its Ray actor's __init__ loads tokenizers from a hub
    worker.config = OmegaConf.create(
        {"reward": {"reward_model": {"model_path": "/models/my-rm", "rollout": {"name": "vllm"}}}}
    )
    worker.reward_router_address = server.url.removeprefix("http://")
    worker.input_tokenizer, worker.reward_model_tokenizer = CharTokenizer(), rm_tok
    got = asyncio.run(worker.compute_score_disrm(batch(HISTORY, RESPONSE + "<|im_end|>")))
    want = conversation_reward(server, [*HISTORY, {"role": "assistant", "content": RESPONSE}])
    assert got["reward_score"] == pytest.approx(want, abs=1e-6)


def test_prepare_dataset_writes_rows_verl_reads(tmp_path, start_server, monkeypatch):
    import gzip
    import json

    import pyarrow.parquet as pq

    from morlaif.integrations.verl import close, compute_score, main

    src = tmp_path / "hh.jsonl.gz"
    with gzip.open(src, "wt") as f:
        for chosen, rejected in [("\n\nHuman: a?\n\nAssistant: b\n\nHuman: c?\n\nAssistant: yes", "no"),
                                 ("\n\nHuman: d?\n\nAssistant: sure", "nope")]:  # fmt: skip
            prompt = chosen[: chosen.rindex("Assistant:") + len("Assistant:")]
            f.write(json.dumps({"chosen": chosen, "rejected": prompt + " " + rejected}) + "\n")
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n')
    out = tmp_path / "train.parquet"
    assert main([str(out), str(src)]) == 0
    rows = pq.read_table(out).to_pylist()
    assert [r["prompt"] for r in rows] == [
        [{"role": "user", "content": "a?"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c?"}],
        [{"role": "user", "content": "d?"}],
    ]
    assert rows[0]["reward_model"] == {"style": "model", "ground_truth": ""} and rows[0]["extra_info"]["index"] == 0
    assert main([str(tmp_path / "x.parquet"), str(tmp_path / "bad.jsonl")]) == 2
    # what veRL hands compute_score from such a row (extra_info as read back) scores
    server = start_server()
    monkeypatch.setenv("MORLAIF_API_KEY", API_KEY)
    got = compute_score(rows[0]["data_source"], "yes", "", rows[0]["extra_info"], url=server.url)
    want = conversation_reward(server, [*rows[0]["prompt"], {"role": "assistant", "content": "yes"}])
    assert got["score"] == pytest.approx(want, abs=1e-6)
    close()
