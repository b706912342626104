"""OpenRLHF 0.11's own rollout code (`SingleTurnAgentExecutor`) getting its rewards from morlaif.

`execute()` is OpenRLHF's real per-sample path: it tokenizes the prompt, truncates it from the left when it is
too long, asks the engine for a continuation, decodes prompt + response with special tokens kept, and fetches
the reward over HTTP (URL mode: no headers at all, 5 tries) or from a Python file (file mode). Only the engine
(vLLM, GPU) and the tokenizer are stand-ins here: a character tokenizer whose decode gives back the exact text.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from peer_helpers import API_KEY, HISTORY, RESPONSE, chatml, conversation_reward, need, sigmoid

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "openrlhf_reward_func.py"


class CharTokenizer:
    """One token per character: decode(encode(text)) == text, special-token strings included."""

    def __call__(self, text, add_special_tokens=False, return_tensors=None):
        import torch

        return {"input_ids": torch.tensor([[ord(c) for c in text]])}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids)


class Engine:
    """vLLM's engine, answering every prompt with `text` (as token ids)."""

    def __init__(self, text: str) -> None:
        self.text = text

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        class Output:
            token_ids = [ord(c) for c in self.text]
            finish_reason = "stop"
            logprobs = None

        class RequestOutput:
            outputs = [Output()]

        return RequestOutput()


class SamplingParams:
    max_tokens = 64
    logprobs = None


def execute(executor, prompt: str, response: str, max_length: int = 4096) -> dict:
    return asyncio.run(
        executor.execute(prompt, "label", SamplingParams(), max_length, CharTokenizer(), Engine(response))
    )


def test_url_mode_without_a_key_from_a_trusted_network(start_server):
    need("openrlhf.utils.agent")
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    server = start_server(trusted_networks=["127.0.0.0/8"])
    executor = SingleTurnAgentExecutor(server.url + "/get_reward")
    want = conversation_reward(server, [*HISTORY, {"role": "assistant", "content": RESPONSE}])
    for pads in (0, 1, 4, 16):  # a ChatML policy's end-of-turn, then padding
        out = execute(executor, chatml(HISTORY), RESPONSE + "<|im_end|>" + "<|endoftext|>" * pads)
        assert out["reward"] == [pytest.approx(want, abs=1e-6)], pads
        assert out["scores"] == [pytest.approx(sigmoid(want))] and 0 < out["scores"][0] < 1
        assert set(out["extra_logs"]) == {"helpfulness", "harmlessness", "brevity", "no_refusal"}
    # OpenRLHF cuts a long prompt from the left and posts the original: the reward is still the pair's
    prompt = "Background the policy only partly saw. " * 20 + "So, what is the answer?"
    out = execute(executor, prompt, " Forty-two.", max_length=64 + 100)
    plain = conversation_reward(
        server, [{"role": "user", "content": prompt}, {"role": "assistant", "content": " Forty-two."}]
    )
    assert out["reward"] == [pytest.approx(plain, abs=1e-6)]


def test_url_mode_against_a_keyed_server_gets_no_reward(start_server, monkeypatch):
    need("openrlhf.utils.agent")
    from openrlhf.utils import agent

    class NoWait:
        """asyncio for OpenRLHF's module only, without its 1 s between the 5 tries (patching asyncio.sleep itself
        would make every live server's event loop in this process spin)."""

        def __getattr__(self, name: str):
            return getattr(asyncio, name)

        async def sleep(self, _seconds: float) -> None:
            return None

    server = start_server()
    monkeypatch.setattr(agent, "asyncio", NoWait())
    # OpenRLHF sends no headers: every try is a 401, and after its retries the sample has no reward; hence
    # trusted networks (above) or file mode with the key (below)
    out = execute(agent.SingleTurnAgentExecutor(server.url + "/get_reward"), chatml(HISTORY), RESPONSE)
    assert out["reward"] is None


def test_file_mode_with_the_key(start_server, monkeypatch):
    need("openrlhf.utils.agent")
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    from morlaif.integrations import openrlhf as integration

    server = start_server()
    monkeypatch.setenv("MORLAIF_URL", server.url)
    monkeypatch.setenv("MORLAIF_API_KEY", API_KEY)
    monkeypatch.setattr(integration, "_client", None)
    executor = SingleTurnAgentExecutor(str(EXAMPLE))  # OpenRLHF loads the file and its reward_func
    assert executor.reward_func is not None
    want = conversation_reward(server, [*HISTORY, {"role": "assistant", "content": RESPONSE}])
    out = execute(executor, chatml(HISTORY), RESPONSE + "<|im_end|><|endoftext|><|endoftext|>")
    assert float(out["reward"]) == pytest.approx(want, abs=1e-5)
    assert float(out["scores"]) == pytest.approx(sigmoid(want), abs=1e-6)
    assert set(out["extra_logs"]) == {"helpfulness", "harmlessness", "brevity", "no_refusal"}
    integration.client().close()
