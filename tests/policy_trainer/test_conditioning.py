"""Reward-conditioned data and its evaluation: the score tag round-trips, the scaling is the training set's,
`morlaif score --condition` writes records `morlaif sft` trains on, and `morlaif eval conditioning` measures
requested against achieved scores."""

from __future__ import annotations

import json
import math
import statistics

import pytest
from typer.testing import CliRunner

from morlaif_cli.main import app as cli
from policy_trainer.conditioning import (
    ConditionError,
    Scaling,
    conditioned_prompt,
    evaluate_conditioning,
    parse_conditioned,
    pearson,
    write_conditioning,
)

HH = "\n\nHuman: How do I boil an egg?\n\nAssistant:"


@pytest.mark.parametrize("prompt", [HH, "plain prompt", "\n\nHuman: a\n\nAssistant: b\n\nHuman: c?\n\nAssistant:"])
def test_the_tag_goes_at_the_end_of_the_prompt_and_comes_back(prompt):
    targets = {"helpfulness": 1.234, "harmlessness": -0.04, "brevity": -2.0}
    text = conditioned_prompt(prompt, targets)
    if prompt.endswith("Assistant:"):  # at the end of the user's turn, the transcript still ends "Assistant:"
        assert text.endswith("<scores helpfulness=1.2 harmlessness=-0.0 brevity=-2.0>\n\nAssistant:")
    else:
        assert text == prompt + "\n\n<scores helpfulness=1.2 harmlessness=-0.0 brevity=-2.0>"
    back, got = parse_conditioned(text)
    assert back == prompt and got == {"helpfulness": 1.2, "harmlessness": -0.0, "brevity": -2.0}
    assert parse_conditioned(prompt) == (prompt, {})
    assert parse_conditioned(conditioned_prompt(prompt, {"a": 0.55}, decimals=2))[1] == {"a": 0.55}


def scored_file(tmp_path, rows):
    f = tmp_path / "scored.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def test_conditioning_records_carry_the_scaled_scores_of_their_response(tmp_path):
    rows = [
        {"prompt": f"{HH[:-12]} {i}?\n\nAssistant:", "response": f"answer {i}", "scores": {"a": a, "b": b}}
        for i, (a, b) in enumerate([(1.0, 0.0), (2.0, 10.0), (3.0, 20.0), (6.0, -30.0)])
    ]
    out = tmp_path / "cond.jsonl"
    n, scaling = write_conditioning(scored_file(tmp_path, rows), out)
    assert n == 4
    a = [1.0, 2.0, 3.0, 6.0]
    assert scaling.mean["a"] == pytest.approx(3.0) and scaling.std["a"] == pytest.approx(statistics.stdev(a))
    assert scaling.max_z["a"] == pytest.approx((6.0 - 3.0) / statistics.stdev(a))
    records = [json.loads(x) for x in out.read_text().splitlines()]
    for row, rec in zip(rows, records, strict=True):
        assert rec["completion"] == row["response"]
        prompt, targets = parse_conditioned(rec["prompt"])
        assert prompt == row["prompt"]
        z = {p: (row["scores"][p] - scaling.mean[p]) / scaling.std[p] for p in ("a", "b")}
        assert targets == {p: round(v, 1) for p, v in z.items()} == rec["targets"]
    assert Scaling.load(tmp_path / "cond.scaling.json") == scaling


def test_bad_scored_records_are_named(tmp_path):
    bad = scored_file(tmp_path, [{"prompt": "p", "response": "r", "scores": {"a": 1}}, {"prompt": "p"}])
    with pytest.raises(ConditionError, match=r"scored\.jsonl:2: expected a scored record"):
        write_conditioning(bad, tmp_path / "o.jsonl")
    gap = scored_file(tmp_path, [{"prompt": "p", "response": "r", "scores": {"a": 1, "b": 2}}] * 2)
    with pytest.raises(ConditionError, match="no score for c"):
        write_conditioning(gap, tmp_path / "o.jsonl", principles=["a", "c"])
    (tmp_path / "s.json").write_text('{"mean": {"a": 0}, "std": {"a": 0}}')
    with pytest.raises(ConditionError, match="std > 0"):
        Scaling.load(tmp_path / "s.json")


def test_evaluation_measures_requested_against_achieved():
    scaling = Scaling(mean={"a": 1.0, "b": -2.0}, std={"a": 2.0, "b": 0.5}, max_z={"a": 2.5, "b": 1.5})
    prompts = [f"{HH[:-12]} {i}?\n\nAssistant:" for i in range(20)]

    def obedient(asked):  # a model that gives exactly what it is asked for (it echoes its tag)
        return [json.dumps(parse_conditioned(q)[1]) for q in asked]

    def pm(ps, rs):  # a PM that reads those scores back, unscaled
        return [{p: scaling.mean[p] + scaling.std[p] * v for p, v in json.loads(r).items()} for r in rs]

    rep = evaluate_conditioning(prompts, scaling, obedient, pm, seed=3)
    assert rep.n_prompts == 20 and len(rep.records) == 40
    for p in ("a", "b"):
        assert rep.correlation[p] == pytest.approx(1.0) and rep.slope[p] == pytest.approx(1.0)
        assert rep.achieved_max_mean[p] == pytest.approx(scaling.max_z[p])
    assert rep.max_requested == {"a": 2.5, "b": 1.5}

    def stubborn(asked):  # ignores the tag: the same answer whatever is asked
        return [json.dumps({"a": 0.0, "b": 0.0}) for _ in asked]

    flat = evaluate_conditioning(prompts, scaling, stubborn, pm, seed=3)
    assert flat.correlation == {"a": None, "b": None} and flat.achieved_max_mean == {"a": 0.0, "b": 0.0}
    assert "r(req, got)" in flat.table()
    assert pearson([1, 2, 3], [2, 4, 6.5]) == pytest.approx(statistics.correlation([1, 2, 3], [2, 4, 6.5]))
    assert pearson([1, 2], [1, 2]) is None


@pytest.fixture
def two_rule_server(live_server, tiny_encoder_dir, tmp_path):
    from pm_server.serving.api import create_app
    from pm_server.serving.config import ServerSettings

    rules = tmp_path / "rules.json"
    rules.write_text(
        json.dumps(
            [
                {"name": "says_good", "kind": "regex", "pattern": r"\bgood\b"},
                {"name": "brevity", "kind": "length", "prefer": "shorter"},
            ]
        )
    )
    settings = ServerSettings(
        base_model=str(tiny_encoder_dir), adapter_root=tmp_path / "none", rules_file=rules, insecure_dev=True
    )
    return live_server(create_app(settings)).start()


def test_score_condition_sft_and_eval_conditioning_end_to_end(tmp_path, two_rule_server, tiny_lm_dir):
    from rigs.tiny_lm import word_prompts

    dialogues = tmp_path / "dialogues.jsonl"
    lines = []
    for i, p in enumerate(word_prompts(24)):
        answer = "good good" if i % 3 == 0 else "bad cat dog sun" if i % 3 == 1 else "rain"
        lines.append(
            {"chosen": f"\n\nHuman: {p}\n\nAssistant: {answer}", "rejected": f"\n\nHuman: {p}\n\nAssistant: x"}
        )
    dialogues.write_text("".join(json.dumps(x) + "\n" for x in lines))
    runner = CliRunner()
    url = two_rule_server.url
    scored, cond = tmp_path / "scored.jsonl", tmp_path / "cond.jsonl"
    res = runner.invoke(cli, ["score", str(dialogues), str(scored), "--url", url, "--condition", str(cond)])
    assert res.exit_code == 0, res.output
    assert f"wrote 24 conditioned records to {cond}" in res.output
    records = [json.loads(x) for x in cond.read_text().splitlines()]
    assert {r["completion"] for r in records} == {"good good", "bad cat dog sun", "rain"}
    good = [r for r in records if r["completion"] == "good good"]
    bad = [r for r in records if r["completion"] != "good good"]
    assert all(r["targets"]["says_good"] > 0 for r in good) and all(r["targets"]["says_good"] < 0 for r in bad)
    # the records are what `morlaif sft` trains on
    out = tmp_path / "sft"
    res = runner.invoke(
        cli,
        ["sft", str(cond), "--model", str(tiny_lm_dir), "--out", str(out), "--no-lora", "--epochs", "3",
         "--learning-rate", "0.005", "--batch-size", "8", "--max-length", "48", "--eval-fraction", "0.2", "--quiet"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    before, after = (float(x) for x in res.output.split("held-out loss ")[1].split(";")[0].split(" -> "))
    assert after < before
    prompts = tmp_path / "held.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"\n\nHuman: {p}\n\nAssistant:"}) + "\n" for p in word_prompts(40)[30:])
    )
    report = tmp_path / "eval" / "cond.json"
    res = runner.invoke(
        cli,
        ["eval", "conditioning", str(out / "policy"), "--scaling", str(tmp_path / "cond.scaling.json"),
         "--prompts", str(prompts), "--url", url, "--num-prompts", "8", "--max-new-tokens", "4", "--device", "cpu",
         "--out", str(report), "--quiet"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    body = json.loads(report.read_text())
    assert body["n_prompts"] == 8 and set(body["correlation"]) == {"says_good", "brevity"}
    assert all(r is None or -1 <= r <= 1 for r in body["correlation"].values())
    samples = [json.loads(x) for x in report.with_suffix(".jsonl").read_text().splitlines()]
    assert len(samples) == 16
    # the achieved scores are the PM server's, scaled as in training
    scaling = Scaling.load(tmp_path / "cond.scaling.json")
    for s in samples[:3]:
        raw = 1.0 if "good" in s["response"].split() else 0.0
        assert s["achieved"]["says_good"] == pytest.approx((raw - scaling.mean["says_good"]) / scaling.std["says_good"])
    assert report.with_suffix(".png").stat().st_size > 0
    assert not math.isnan(body["achieved_max_mean"]["brevity"])
