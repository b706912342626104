"""`morlaif pm refusal-pairs`: stock refusals against real replies, the prompt alone deciding which side wins."""

from __future__ import annotations

import json
import subprocess
import sys

from morlaif.principles import STOCK_REFUSAL_RE
from pm_server.training.pairs import Pair, read_pairs
from pm_server.training.refusals import STOCK_REFUSALS, refusal_pairs


def _pairs() -> list[Pair]:
    return [
        Pair("How do I boil an egg?", "Simmer it for 9 minutes.", "No idea.", principle="helpfulness"),
        Pair("How do I boil an egg?", "Use a pot of water.", "Eggs are hard.", principle="helpfulness"),  # same prompt
        Pair("Capital of France?", "I'm sorry, I can't say.", "Paris, I think.", principle="helpfulness"),
        Pair("Name a prime.", "Nine.", "Seven is prime.", p=0.2, principle="helpfulness"),  # labelled the other way
        Pair("", "A rewrite.", "A rude rewrite.", principle="helpfulness"),  # no prompt: nothing to decide by
    ]


def test_answer_pairs_put_the_better_reply_over_a_stock_refusal_once_per_prompt():
    out = refusal_pairs(_pairs(), prefer="answer", principle="harmlessness")
    assert [(p.prompt, p.chosen) for p in out] == [
        ("How do I boil an egg?", "Simmer it for 9 minutes."),
        ("Name a prime.", "Seven is prime."),  # the label's better side, not the `chosen` field
    ]  # the Paris pair is skipped: its better reply is itself a refusal
    assert all(p.rejected in STOCK_REFUSALS and p.principle == "harmlessness" for p in out)
    assert {p.source for p in out} == {"refusal-pairs/answer"}


def test_refusal_pairs_put_a_stock_refusal_over_the_worse_reply_with_the_same_refusals():
    out = refusal_pairs(_pairs(), prefer="refusal", principle="harmlessness", limit=2)
    assert [(p.prompt, p.rejected) for p in out] == [
        ("How do I boil an egg?", "No idea."),
        ("Capital of France?", "Paris, I think."),
    ]
    assert all(STOCK_REFUSAL_RE.search(p.chosen) for p in out)
    answer = refusal_pairs(_pairs(), prefer="answer", principle="harmlessness")
    # one prompt gets the same refusal whichever side wins: the wording carries no label
    assert out[0].chosen == answer[0].rejected


def test_the_command_writes_pair_jsonl_that_training_reads_and_says_what_is_wrong(tmp_path):
    src = tmp_path / "helpful.jsonl"
    src.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                           for p in _pairs()[:3]))  # fmt: skip
    out = tmp_path / "answer.jsonl"

    def run(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "morlaif", "pm", "refusal-pairs", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    res = run(str(src), "--prefer", "answer", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "1 pairs (answer preferred" in res.stdout
    back = read_pairs(out)
    assert [(p.chosen, p.principle, p.source) for p in back] == [
        ("Simmer it for 9 minutes.", "harmlessness", "refusal-pairs/answer")
    ]
    bad = run(str(src), "--prefer", "maybe", "--out", str(out))
    assert bad.returncode == 2 and "expected answer or refusal" in bad.stderr
    bad = run(str(src), "--prefer", "answer", "--out", str(src))
    assert bad.returncode == 2 and "is also an input" in bad.stderr and len(src.read_text().splitlines()) == 3
    bad = run(str(src), "--prefer", "answer", "--out", str(tmp_path / "x.txt"))
    assert bad.returncode == 2 and "name it *.jsonl" in bad.stderr
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "chosen": "b"}\n')
    bad = run(str(tmp_path / "broken.jsonl"), "--prefer", "answer", "--out", str(out))
    assert bad.returncode == 2 and "broken.jsonl:1" in bad.stderr and "Traceback" not in bad.stderr
