"""`morlaif eval winrate`: two real tiny policies, sampled, judged by a stand-in OpenAI server over HTTP."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from morlaif.stats import wilson_interval
from morlaif_cli.main import app
from policy_trainer.winrate import OVERALL, WinRateError, baseline_of, prompt_source, summarize
from rigs.fake_openai import FIRST_BIAS, PREFERENCE_LOGIT, make_app
from rigs.tiny_lm import save_one_word_lm, word_prompts


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def expected_p(policy: str, baseline: str) -> float:
    """The stand-in judge's p(policy better), both orders averaged (it prefers a text containing "good")."""

    def first(a: str, b: str) -> float:
        pref = PREFERENCE_LOGIT if "good" in a else -PREFERENCE_LOGIT if "good" in b else 0.0
        return sigmoid(pref + FIRST_BIAS)

    return 0.5 * (first(policy, baseline) + 1.0 - first(baseline, policy))


def test_wilson_interval_and_ties():
    low, high = wilson_interval(8, 10)  # the textbook example
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    r = summarize("x", [0.9, 0.5, 0.2, None, 0.7])
    assert (r.n, r.wins, r.ties, r.losses, r.failed) == (4, 2, 1, 1, 1)
    assert r.win_rate == pytest.approx(2.5 / 4) and r.mean_p == pytest.approx(2.3 / 4)
    assert (r.low, r.high) == pytest.approx(wilson_interval(2.5, 4))


@pytest.fixture(scope="module")
def good_lm_dir(tmp_path_factory):
    return save_one_word_lm(tmp_path_factory.mktemp("good-lm"))


def _winrate(policy, baseline, url, tmp_path, name):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in word_prompts(40)))
    out = tmp_path / f"{name}.json"
    args = [
        "eval", "winrate", str(policy), "--baseline", str(baseline), "--judge", "fake-judge",
        "--judge-base-url", url + "/v1", "--prompts", str(prompts), "--eval-fraction", "1", "--num-prompts", "24",
        "--principles", "helpfulness", "--max-new-tokens", "4", "--temperature", "1.0", "--max-retries", "0",
        "--device", "cpu", "--out", str(out), "--quiet",
    ]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    records = [json.loads(x) for x in out.with_suffix(".jsonl").read_text().splitlines()]
    return json.loads(out.read_text()), records, res.output


def test_winrate_of_a_policy_that_says_good(live_server, tiny_lm_dir, good_lm_dir, tmp_path):
    judge = make_app()
    srv = live_server(judge).start(ready_path=None)
    judge.state.faults = ["garbage"]  # one unreadable answer: that comparison is left out, not guessed
    report, records, output = _winrate(good_lm_dir, tiny_lm_dir, srv.url, tmp_path, "a")
    assert len(records) == 24 and report["n_prompts"] == 24
    assert len(judge.state.times) == 24 * 2 * 2  # two questions (helpfulness, overall), both orders each
    assert all(r["policy"].split() and set(r["policy"].split()) == {"good"} for r in records)
    results = {r["principle"]: r for r in report["results"]}
    assert set(results) == {"helpfulness", OVERALL}
    assert sum(r["failed"] for r in results.values()) == 1 and report["judge_failures"] == {"unparseable": 1}
    for name, r in results.items():
        got = [rec["p_policy"][name] for rec in records]
        for rec, p in zip(records, got, strict=True):
            assert p is None or p == pytest.approx(expected_p(rec["policy"], rec["baseline"]), abs=1e-6)
        want = summarize(name, got).to_dict()
        assert r == pytest.approx(want)
        # ties are the prompts where the baseline also happened to say "good"
        assert r["ties"] == sum(
            p is not None and "good" in rec["baseline"] for rec, p in zip(records, got, strict=True)
        )
        assert r["losses"] == 0 and r["wins"] > 0 and r["win_rate"] > 0.6 and r["low"] > 0.5
        assert r["mean_p"] > 0.6
    assert "overall" in output and "win rate" in output

    # the other way round, on the same prompts and samples: the complement
    swapped, _, _ = _winrate(tiny_lm_dir, good_lm_dir, srv.url, tmp_path, "b")
    for r in swapped["results"]:
        a = results[r["principle"]]
        if a["failed"] == 0:
            assert r["win_rate"] == pytest.approx(1 - a["win_rate"]) and r["mean_p"] == pytest.approx(1 - a["mean_p"])
            assert (r["wins"], r["losses"], r["ties"]) == (a["losses"], a["wins"], a["ties"])


def test_clear_errors(tiny_lm_dir, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "winrate", str(tiny_lm_dir), "--baseline", "x", "--principles", "vibes"])
    assert res.exit_code == 2 and "unknown principle 'vibes'" in res.output and "harmlessness" in res.output
    res = runner.invoke(app, ["eval", "winrate", str(tiny_lm_dir)])
    assert res.exit_code == 2 and "give --baseline" in res.output
    res = runner.invoke(app, ["eval", "winrate", str(tiny_lm_dir), "--baseline", "x", "--prompts", "nope.jsonl"])
    assert res.exit_code == 2 and "nope.jsonl: no such prompt file" in res.output


def test_a_run_folder_brings_its_split_and_base(tmp_path):
    run = tmp_path / "run"
    (run / "policy").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("")
    (run / "config.yaml").write_text("data:\n  prompts: p.jsonl\n  eval_fraction: 0.25\n  split_salt: s1\n")
    (run / "policy" / "morlaif_policy.json").write_text(json.dumps({"base": "some/base", "lora": True}))
    for policy in (run, run / "policy"):
        src = prompt_source(str(policy), prompts=None, eval_fraction=None, salt=None)
        assert (src.prompts, src.eval_fraction, src.salt) == ("p.jsonl", 0.25, "s1")
        assert baseline_of(str(policy)) == "some/base"
    src = prompt_source(str(run), prompts="q.jsonl", eval_fraction=0.5, salt="s2")
    assert (src.prompts, src.eval_fraction, src.salt) == ("q.jsonl", 0.5, "s2")
    with pytest.raises(WinRateError, match="give --baseline"):
        baseline_of(str(tmp_path))
