"""`morlaif sft` through TRL's SFTTrainer on a tiny real causal LM: the held-out loss falls, the policy it
writes loads and says what it learnt, LoRA merged or not, a rerun resumes, bad data names file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from morlaif_cli.main import app as cli
from policy_trainer.sft import SFTDataError, SFTSettings, read_sft_examples, run_sft
from policy_trainer.train import POLICY_MANIFEST, load_trained_policy
from rigs.tiny_lm import word_prompts

TARGET = "good good good"


def data_file(tmp_path: Path, n: int = 48) -> Path:
    f = tmp_path / "sft.jsonl"
    f.write_text("".join(json.dumps({"prompt": p, "completion": TARGET}) + "\n" for p in word_prompts(n)))
    return f


def greedy_words(policy_dir: Path, prompts: list[str]) -> list[str]:
    model, tok = load_trained_policy(str(policy_dir), device="cpu")
    words = []
    for p in prompts:
        ids = tok(p, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
        words += tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).split()
    return words


def settings(tmp_path: Path, tiny_lm_dir: Path, **kw) -> SFTSettings:
    base = dict(
        model=str(tiny_lm_dir), out=tmp_path / "run", lora=False, epochs=4.0, learning_rate=5e-3, batch_size=8,
        max_length=32, eval_fraction=0.25, device="cpu", save_steps=1000,
    )  # fmt: skip
    base.update(kw)
    return SFTSettings(**base)


def test_sft_lowers_the_held_out_loss_and_the_policy_says_what_it_learnt(tmp_path, tiny_lm_dir):
    before_words = greedy_words(tiny_lm_dir, word_prompts(6))
    res = run_sft([data_file(tmp_path)], settings(tmp_path, tiny_lm_dir), progress=False)
    assert res.examples == 48 and res.held_out == 12 and res.steps == 4 * 5  # 36 examples: 5 steps of 8 an epoch
    assert res.eval_loss_after < 0.5 * res.eval_loss_before, (res.eval_loss_before, res.eval_loss_after)
    after_words = greedy_words(res.out / "policy", word_prompts(6))
    assert after_words.count("good") > before_words.count("good") and after_words.count("good") >= 12
    report = json.loads((res.out / "sft.json").read_text())
    assert report["result"]["eval_loss_after"] == pytest.approx(res.eval_loss_after)
    assert report["conversational"] is False  # the tiny tokenizer has no chat template


@pytest.mark.parametrize("merge", [True, False])
def test_lora_sft_saves_a_policy_that_loads(tmp_path, tiny_lm_dir, merge):
    cfg = settings(tmp_path, tiny_lm_dir, lora=True, lora_r=4, lora_alpha=8, learning_rate=2e-2, merge=merge)
    res = run_sft([data_file(tmp_path)], cfg, progress=False)
    assert res.eval_loss_after < res.eval_loss_before
    policy = res.out / "policy"
    assert (policy / POLICY_MANIFEST).is_file() is (not merge)
    assert (policy / "adapter_config.json").is_file() is (not merge)
    assert greedy_words(policy, word_prompts(2))  # loads (merged onto the base when it is an adapter) and generates


def test_a_rerun_resumes_from_the_newest_checkpoint(tmp_path, tiny_lm_dir):
    data = [data_file(tmp_path)]
    first = run_sft(data, settings(tmp_path, tiny_lm_dir, epochs=1.0, save_steps=2), progress=False)
    assert first.steps == 5 and any((first.out / "checkpoints").glob("checkpoint-5"))
    again = run_sft(data, settings(tmp_path, tiny_lm_dir, epochs=2.0, save_steps=2), progress=False)
    assert again.steps == 10
    assert again.eval_loss_before is None  # resumed: there is no "before" of this run to measure


def test_every_data_form_is_read(tmp_path):
    f = tmp_path / "mixed.jsonl"
    lines = [
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"},
        {"prompt": "q1", "response": "r1"},
        {"prompt": "q2", "chosen": "c2", "rejected": "x"},
        {"messages": [{"role": "user", "content": "q3"}, {"role": "assistant", "content": "r3"}]},
        {"prompt": "q4", "completion": "  "},  # an empty response is left out... as an error: it must be text
    ]
    f.write_text("".join(json.dumps(x) + "\n" for x in lines[:4]))
    assert read_sft_examples([f]) == [
        ("\n\nHuman: hi\n\nAssistant:", "hello"),
        ("q1", "r1"),
        ("q2", "c2"),
        ("\n\nHuman: q3\n\nAssistant:", "r3"),
    ]
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(SFTDataError, match=r"mixed\.jsonl:5: field 'completion' must be a non-empty string"):
        read_sft_examples([f])


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ({"prompt": "q"}, "a 'prompt' needs a 'completion', 'response' or 'chosen'"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}]},
            "the last message must be the assistant's",
        ),
        ({"text": "x"}, "expected 'prompt' + 'completion'"),
    ],
)
def test_the_cli_names_the_bad_line(tmp_path, tiny_lm_dir, line, words):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n" + json.dumps(line) + "\n")
    out = CliRunner().invoke(cli, ["sft", str(f), "--model", str(tiny_lm_dir), "--out", str(tmp_path / "o")])
    assert out.exit_code == 2, out.output
    assert f"bad.jsonl:2: {words}" in out.output


def test_sigterm_saves_the_step_in_hand_and_a_rerun_finishes(tmp_path, tiny_lm_dir, monkeypatch):
    """docker stop / a pod's end mid-run: before, SIGTERM killed it and lost every step since save_steps."""
    import os
    import signal

    import policy_trainer.sft as sft_module
    from morlaif.runs import Stopped

    real = sft_module._save_and_stop_callback

    def signalling(stop):
        callback = real(stop)

        class SignalAtStepTwo(type(callback)):
            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step == 1:  # a signal arrives while step 2 runs
                    os.kill(os.getpid(), signal.SIGTERM)

        return SignalAtStepTwo()

    monkeypatch.setattr(sft_module, "_save_and_stop_callback", signalling)
    data = [data_file(tmp_path)]
    with pytest.raises(Stopped) as info:
        run_sft(data, settings(tmp_path, tiny_lm_dir), progress=False)  # save_steps=1000: no periodic save
    assert info.value.exit_code == 143
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("checkpoint-*")] == ["checkpoint-2"]
    assert not (tmp_path / "run" / "policy").exists()  # the policy is written by the run that finishes
    monkeypatch.setattr(sft_module, "_save_and_stop_callback", real)
    res = run_sft(data, settings(tmp_path, tiny_lm_dir), progress=False)
    assert res.steps == 20 and (res.out / "policy").is_dir()
