"""`morlaif pm train|eval|split|length-correct` as a user runs them: real processes, files, a real server."""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import torch

from morlaif.protocol import Calibration, ScalarizerSpec, length_feature
from pm_server.model.base import load_base
from pm_server.serving.api import create_app
from pm_server.serving.config import ServerSettings
from pm_server.training.evaluation import PackageScorer, labelled_margins
from pm_server.training.length import fit_length_coef
from pm_server.training.pairs import Pair, package_pairs, split_by_prompt
from rigs.pm_packages import politeness_pairs, sentence

ADMIN_KEY = "admin-key-0123456789"
API_KEY = "score-key-0123456789"
FAST = ["--epochs", "2", "--batch-size", "16", "--lr", "3e-3", "--max-length", "64", "--device", "cpu", "--quiet"]


def morlaif(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "morlaif", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


def write_pairs(path: Path, pairs: list[Pair], **extra: object) -> Path:
    with path.open("w") as f:
        for p in pairs:
            rec = {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "principle": p.principle, **extra}
            f.write(json.dumps(rec) + "\n")
    return path


def brevity_pairs(n: int) -> list[Pair]:
    """A second synthetic principle: the shorter response is better."""
    out = []
    for i, p in enumerate(politeness_pairs(n, seed=7)):
        short, long = sorted([p.chosen, p.rejected], key=len)
        if short == long:
            continue
        out.append(Pair(prompt=f"brief {i}", chosen=short, rejected=long, principle="shortness", source="synthetic"))
    return out


def test_split_keeps_prompts_together_and_converts_hh(tmp_path):
    hh = tmp_path / "hh.jsonl"
    rows = []
    for i in range(30):
        prompt = f"\n\nHuman: question {i % 10}?\n\nAssistant:"
        rows.append({"chosen": prompt + f" good answer {i}", "rejected": prompt + f" bad answer {i}"})
    hh.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = morlaif("pm", "split", f"harmlessness={hh}", "--out-dir", str(tmp_path / "out"), "--parts", "a=0.5,b=0.5")
    assert "a:" in res.stdout and "b:" in res.stdout
    parts = {n: [json.loads(x) for x in (tmp_path / "out" / f"{n}.jsonl").read_text().splitlines()] for n in "ab"}
    assert len(parts["a"]) + len(parts["b"]) == 30
    assert {r["prompt"] for r in parts["a"]}.isdisjoint({r["prompt"] for r in parts["b"]})
    assert all(r["principle"] == "harmlessness" and r["chosen"].startswith("good") for r in parts["a"] + parts["b"])
    bad = morlaif("pm", "split", str(hh), "--out-dir", str(tmp_path / "o2"), check=False)
    assert bad.returncode == 2 and "give one as principle=" in bad.stderr and "Traceback" not in bad.stderr
    frac = morlaif("pm", "split", f"h={hh}", "--out-dir", str(tmp_path / "o3"), "--parts", "a=0.5,b=0.2", check=False)
    assert frac.returncode == 2 and "sum to 1" in frac.stderr
    pairs = tmp_path / "pairs.jsonl"  # a pair file whose second line is not JSON, another a JSON list
    first = {"principle": "helpfulness", "prompt": "a", "chosen": "x", "rejected": "y"}
    for n, (line, why) in enumerate([("not json here", "invalid JSON"), ("[1, 2]", "")]):
        pairs.write_text(json.dumps(first) + "\n" + line + "\n")
        res = morlaif("pm", "split", str(pairs), "--out-dir", str(tmp_path / f"o{4 + n}"), check=False)
        assert res.returncode == 2 and f"{pairs}:2" in res.stderr and why in res.stderr, res.stderr
        assert "Traceback" not in res.stderr


def test_train_errors_name_the_file_line_and_principle(tmp_path, tiny_encoder_dir):
    f = write_pairs(tmp_path / "p.jsonl", politeness_pairs(30))
    res = morlaif("pm", "train", "--principle", "factuality", "--data", str(f), "--base", str(tiny_encoder_dir),
                  check=False)  # fmt: skip
    assert res.returncode == 2 and "no pairs for principle 'factuality'" in res.stderr and "politeness" in res.stderr
    with f.open("a") as h:
        h.write('{"prompt": "x", "chosen": "y", "rejected": "z", "principle": "politeness", "p": 1.5}\n')
    res = morlaif("pm", "train", "--principle", "politeness", "--data", str(f), check=False)
    assert res.returncode == 2 and f"{f}:31" in res.stderr and "'p'" in res.stderr
    assert "Traceback" not in res.stderr
    res = morlaif("pm", "train", "--principle", "politeness", check=False)
    assert res.returncode == 2 and "--data" in res.stderr
    res = morlaif("pm", "train", "--principle", "politeness", "--data", str(tmp_path / "nope.jsonl"), check=False)
    assert res.returncode == 2 and "nope.jsonl" in res.stderr


def test_a_file_without_principles_trains_the_principle_given_and_pooling_it_is_refused(tmp_path, tiny_encoder_dir):
    """A pair file written for one PM (no `principle` on its lines) and an HH-RLHF file given bare are that PM's
    data under `pm train --principle`; a pooled run cannot tell whose pairs they are and names the file and line."""
    bare = tmp_path / "bare.jsonl"
    bare.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                            for p in politeness_pairs(40)))  # fmt: skip
    hh = tmp_path / "hh.jsonl"
    hh.write_text("".join(json.dumps({"chosen": f"\n\nHuman: q{i}?\n\nAssistant: thank you, {i}",
                                      "rejected": f"\n\nHuman: q{i}?\n\nAssistant: no {i}"}) + "\n"
                          for i in range(20)))  # fmt: skip
    root = tmp_path / "adapters"
    morlaif("pm", "train", "--principle", "politeness", "--data", str(bare), "--data", str(hh), "--epochs", "1",
            "--version", "v1", "--base", str(tiny_encoder_dir), "--out-root", str(root),
            "--run-dir", str(tmp_path / "run"), *FAST[2:])  # fmt: skip
    manifest = json.loads((root / "politeness" / "v1" / "principle.json").read_text())
    assert manifest["provenance"]["train"]["by_principle"] == {"politeness": manifest["metrics"]["train_pairs"]}
    assert manifest["metrics"]["train_pairs"] + manifest["metrics"]["val_pairs"] == 60
    res = morlaif("pm", "train", "--principle", "single_pm", "--pool", "--data", str(bare), "--base",
                  str(tiny_encoder_dir), "--out-root", str(root), check=False)  # fmt: skip
    assert res.returncode == 2 and f"{bare}:1: no valid principle" in res.stderr and "Traceback" not in res.stderr
    with bare.open("a") as f:  # a line naming a principle that is no principle's name says which and why
        f.write(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c", "principle": "Bad Name!"}) + "\n")
    res = morlaif("pm", "train", "--principle", "politeness", "--data", str(bare), check=False)
    assert res.returncode == 2 and f"{bare}:41: field 'principle' is 'Bad Name!'" in res.stderr


def test_train_eval_publish_end_to_end(tmp_path, tiny_encoder_dir, live_server):
    """Two principles and a pooled single PM; eval writes a report, figures and a weights file the server
    accepts; --publish swaps a new version in while clients score without a single failure."""
    root = tmp_path / "adapters"
    polite = write_pairs(tmp_path / "polite.jsonl", politeness_pairs(240))
    short = write_pairs(tmp_path / "short.jsonl", brevity_pairs(240))
    base = ["--base", str(tiny_encoder_dir), "--out-root", str(root), *FAST]
    for p, f in (("politeness", polite), ("shortness", short)):
        res = morlaif("pm", "train", "--principle", p, "--data", str(f), "--version", "v1",
                      "--run-dir", str(tmp_path / f"run-{p}"), *base)  # fmt: skip
        assert f"wrote {root / p / 'v1'}" in res.stdout
    morlaif("pm", "train", "--principle", "single_pm", "--pool", "--data", str(polite), "--data", str(short),
            "--version", "v1", "--run-dir", str(tmp_path / "run-single"), *base)  # fmt: skip
    single = json.loads((root / "single_pm" / "v1" / "principle.json").read_text())
    assert single["provenance"]["train"]["by_principle"].keys() == {"politeness", "shortness"}

    # human preferences: polite AND short is better (both principles matter)
    human = []
    for i, p in enumerate(politeness_pairs(200, seed=11)):
        words = p.chosen.split()
        human.append(Pair(prompt=f"h{i}", chosen=" ".join(words[:4] + ["please"]), rejected=p.rejected + " more",
                          principle="helpfulness"))  # fmt: skip
    human_file = write_pairs(tmp_path / "human.jsonl", human)
    # --check: pairs outside the fit and outside every package's data, all scored (none held out or dropped)
    check = [Pair(prompt=f"c{i}", chosen="please " + p.rejected, rejected=p.rejected + " and more words")
             for i, p in enumerate(politeness_pairs(30, seed=5))]  # fmt: skip
    check_file = write_pairs(tmp_path / "check.jsonl", check, principle="politeness")
    out = tmp_path / "eval"
    res = morlaif("pm", "eval", "--adapter-root", str(root), "--base", str(tiny_encoder_dir), "--device", "cpu",
                  "--data", str(polite), "--data", str(short), "--validation-only", "--human", str(human_file),
                  "--check", str(check_file), "--single", "single_pm", "--out", str(out))  # fmt: skip
    result = json.loads((out / "eval.json").read_text())
    per = {r["principle"]: r for r in result["per_principle"]}
    assert per.keys() == {"politeness", "shortness"}
    assert per["politeness"]["pm"]["accuracy"] > 0.9 and per["politeness"]["pm"]["n"] < 100  # validation prompts only
    assert per["shortness"]["longer_wins"]["accuracy"] == 0.0  # the baseline is computed, not assumed
    assert per["politeness"]["single_pm"]["n"] == per["politeness"]["pm"]["n"]
    # the length preference: shortness's better reply is always the shorter one, and its PM learnt that
    ln = per["shortness"]["length"]
    assert ln["longer_chosen"]["n"] == 0 and ln["shorter_chosen"]["n"] == per["shortness"]["pm"]["n"]
    assert ln["shorter_chosen"]["accuracy"] > 0.9 and ln["prefers_longer"] < 0.1 and ln["score_length_corr"] < 0
    assert per["shortness"]["per_source"].keys() == {"short"}  # per data set (the file's stem as its source)
    assert per["shortness"]["per_source"]["short"]["pm"] == per["shortness"]["pm"]
    mo = result["multi_objective"]
    assert mo["fit_pairs"] + mo["test_pairs"] == 200 and mo["objective"] == "mean"  # pm eval's default
    assert set(mo["per_scalarizer"]) >= {"linear", "max_min", "median", "lower_quantile"}
    assert mo["per_scalarizer"]["linear"]["accuracy"] > 0.8
    assert mo["single_pm"]["name"] == "single_pm"
    kind = mo["per_kind"]["helpfulness"]  # the served (fitted linear) reward per kind of human preference
    assert kind["pairs"] == mo["test_pairs"] and kind["reward"] == mo["per_scalarizer"]["linear"]
    assert kind["single_pm"]["accuracy"] == mo["single_pm"]["accuracy"]
    # and the served reward on each data set's validation pairs
    served = result["reward_per_source"]
    assert served.keys() == {"politeness/polite", "shortness/short", "politeness/check"}
    assert served["politeness/polite"]["n"] == per["politeness"]["pm"]["n"]
    assert served["politeness/check"]["n"] == 30 and served["politeness/check"]["accuracy"] > 0.8  # polite AND short
    assert "served reward on politeness/check" in res.stdout
    for png in ("principles.png", "scalarizers.png", "agreement.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "scalarizer `linear`" in report and "![agreement](agreement.png)" in report
    assert "| politeness | v1 |" in report and "single PM |" in report
    assert "| shortness | short |" in report and "| helpfulness | " in report  # per data set, per kind
    assert "| politeness/polite | " in report
    spec = ScalarizerSpec.from_file(out / "weights.json")
    assert spec.name == "linear" and set(spec.weights or {}) == {"politeness", "shortness"}
    assert all(w >= 0 for w in spec.weights.values()) and sum(spec.weights.values()) > 0
    assert "weights.json" in res.stdout

    # the server takes the weights file as its default scalarizer, and --publish hot-swaps a new version
    settings = ServerSettings(base_model=str(tiny_encoder_dir), adapter_root=root, api_key=API_KEY,
                              admin_key=ADMIN_KEY, scalarizer_file=out / "weights.json")  # fmt: skip
    assert settings.default_weights == spec.weights
    server = live_server(create_app(settings)).start()
    auth = {"Authorization": f"Bearer {API_KEY}"}
    r = httpx.post(server.url + "/get_reward", json={"query": ["Human: hi\n\nAssistant: please sit"]},
                   headers=auth, timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text
    assert set(r.json()["extra_logs"]) == {"politeness", "shortness"}

    stop = threading.Event()
    statuses: list[int] = []
    versions: set[str] = set()

    def hammer() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                body = {"items": [{"prompt": "p", "response": "please x"}], "principles": ["politeness"]}
                resp = c.post(server.url + "/v1/score", headers=auth, json=body)
                statuses.append(resp.status_code)
                if resp.status_code == 200:
                    versions.add(resp.json()["versions"]["politeness"])

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(hammer) for _ in range(3)]
        try:
            res = morlaif("pm", "train", "--principle", "politeness", "--data", str(polite), "--version", "v2",
                          "--run-dir", str(tmp_path / "run-p2"), "--seed", "1", "--publish", server.url, *base,
                          env={"MORLAIF_ADMIN_KEY": ADMIN_KEY})  # fmt: skip
        finally:
            stop.set()
        for f in futures:
            f.result()
    assert f"{server.url} now serves politeness v2 (was v1)" in res.stdout
    assert ADMIN_KEY not in res.stdout + res.stderr
    assert statuses and set(statuses) == {200}, statuses
    assert versions <= {"v1", "v2"}
    r = httpx.get(server.url + "/v1/principles", headers=auth, timeout=30)
    assert {p["name"]: p["version"] for p in r.json()["principles"]}["politeness"] == "v2"


def test_publish_without_admin_key_fails_clearly_but_keeps_the_package(tmp_path, tiny_encoder_dir, live_server):
    root = tmp_path / "adapters"
    settings = ServerSettings(base_model=str(tiny_encoder_dir), adapter_root=root, api_key=API_KEY,
                              admin_key=ADMIN_KEY)  # fmt: skip
    server = live_server(create_app(settings)).start()
    f = write_pairs(tmp_path / "p.jsonl", politeness_pairs(80))
    res = morlaif("pm", "train", "--principle", "politeness", "--data", str(f), "--version", "v1",
                  "--run-dir", str(tmp_path / "run"), "--base", str(tiny_encoder_dir), "--out-root", str(root),
                  *FAST[:-1], "--epochs", "1", "--quiet", "--publish", server.url,
                  env={"MORLAIF_ADMIN_KEY": "wrong-key-0123456789"}, check=False)  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert "the package is written" in res.stderr and "401" in res.stderr
    assert "wrong-key" not in res.stderr
    assert (root / "politeness" / "v1" / "principle.json").is_file()


@pytest.mark.slow
def test_minilm_pm_learns_real_factuality_pairs(tmp_path, shared_data):
    """The real base on real data: a short run beats a coin on held-out TruthfulQA prompts."""
    res = morlaif("pm", "train", "--principle", "factuality", "--data",
                  str(shared_data / "factuality_truthfulqa.jsonl"), "--limit", "480", "--epochs", "1",
                  "--max-length", "64", "--device", "cpu", "--quiet", "--out-root", str(tmp_path / "a"),
                  "--run-dir", str(tmp_path / "run"))  # fmt: skip
    pkg = next((tmp_path / "a" / "factuality").iterdir())
    m = json.loads((pkg / "principle.json").read_text())
    assert m["base_model"] == "minilm" and m["template"]["max_length"] == 64
    assert m["metrics"]["val_accuracy"] > 0.6, (m["metrics"], res.stdout)


def judged_store(tmp_path: Path, pairs: list[Pair], principles: list[str], *, p_polite: float) -> str:
    """A SQLite label store with `pairs` imported and judge-x's labels for `principles`: p(A) = p_polite
    when A is the response with "please", else 1 - p_polite."""
    from morlaif.store import LabelIn, PairRecord, open_store

    url = f"sqlite:///{tmp_path / 'labels.db'}"
    with open_store(url) as s:
        s.import_pairs(
            [PairRecord(prompt=p.prompt, chosen=p.chosen, rejected=p.rejected, principle=p.principle) for p in pairs]
        )
        s.enqueue(principles, "judge-x")
        for job in s.claim("w", judge="judge-x", limit=10 * len(pairs), lease_s=60):
            a_polite = "please" in job.response_a.split()
            s.complete(job.id, "w", LabelIn(p_a=p_polite if a_polite else 1 - p_polite, judge_model="judge-x"))
    return url


def test_train_from_the_label_store_uses_soft_labels(tmp_path, tiny_encoder_dir):
    """Judge labels in the store (p(A) of 0.9 or 0.1, in the store's own A/B order) train a PM."""
    url = judged_store(tmp_path, politeness_pairs(200, seed=3), ["politeness"], p_polite=0.9)
    root = tmp_path / "adapters"
    res = morlaif("pm", "train", "--principle", "politeness", "--store", url, "--judge", "judge-x",
                  "--version", "v1", "--run-dir", str(tmp_path / "run"), "--base", str(tiny_encoder_dir),
                  "--out-root", str(root), *FAST)  # fmt: skip
    m = json.loads((root / "politeness" / "v1" / "principle.json").read_text())
    assert m["provenance"]["data"] == [{"store": url, "principle": "politeness", "judge": "judge-x", "pairs": 200}]
    assert m["provenance"]["train"]["soft_labels"] == m["provenance"]["train"]["pairs"]
    assert m["metrics"]["val_accuracy"] > 0.9, res.stdout


def test_ctrl_c_or_sigterm_saves_a_consistent_checkpoint_and_the_rerun_resumes(tmp_path, tiny_encoder_dir):
    import signal
    import time

    f = write_pairs(tmp_path / "p.jsonl", politeness_pairs(400))
    run = tmp_path / "run"
    args = [sys.executable, "-m", "morlaif", "pm", "train", "--principle", "politeness",
            "--data", str(f), "--run-dir", str(run), "--base", str(tiny_encoder_dir), "--out-root", str(tmp_path / "a"),
            "--epochs", "200", "--patience", "200", "--max-length", "64", "--device", "cpu", "--quiet"]  # fmt: skip

    def interrupt_after(predicate, sig=signal.SIGINT) -> tuple[int, str]:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            state = json.loads((run / "state.json").read_text()) if (run / "state.json").is_file() else {}
            if predicate(state):
                break
            time.sleep(0.1)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        return proc.returncode, err

    rc, err = interrupt_after(lambda s: s.get("epoch", 0) >= 1)
    assert rc == 130, err
    assert "run the same command again to resume" in err and "Traceback" not in err
    state = json.loads((run / "state.json").read_text())
    train, _ = split_by_prompt(politeness_pairs(400), 0.15, salt="val0")
    steps_per_epoch = -(-len(train) // 16)
    assert state["step"] == state["epoch"] * steps_per_epoch + state["batch_in_epoch"] > 0
    assert (run / "checkpoint" / "state.pt").is_file() and (run / "checkpoint" / "weights.safetensors").is_file()
    first = state["step"]
    # SIGTERM (docker stop, Kubernetes) the same way, with its own status: 143
    rc, err = interrupt_after(lambda s: s.get("step", 0) > first, signal.SIGTERM)
    assert rc == 143 and f"at step {first}" in err and "Traceback" not in err, err
    assert json.loads((run / "state.json").read_text())["step"] > first


def test_pooled_training_from_the_store_takes_every_principle(tmp_path, tiny_encoder_dir):
    url = judged_store(tmp_path, politeness_pairs(120, seed=5), ["politeness", "helpfulness"], p_polite=0.8)
    root = tmp_path / "adapters"
    morlaif("pm", "train", "--principle", "single_pm", "--pool", "--store", url, "--version", "v1",
            "--run-dir", str(tmp_path / "run"), "--base", str(tiny_encoder_dir), "--out-root", str(root),
            *FAST)  # fmt: skip
    m = json.loads((root / "single_pm" / "v1" / "principle.json").read_text())
    got = [(d["principle"], d["pairs"]) for d in m["provenance"]["data"]]
    # no --judge: politeness has the imported human labels as well as judge-x's
    assert got == [("helpfulness", 120), ("politeness", 240)]
    by = m["provenance"]["train"]["by_principle"]
    assert set(by) == {"helpfulness", "politeness"}


def test_eval_errors_are_clear(tmp_path, tiny_encoder_dir):
    root = tmp_path / "adapters"
    res = morlaif("pm", "eval", "--adapter-root", str(root), "--base", str(tiny_encoder_dir), check=False)
    assert res.returncode == 2 and "no packages to evaluate" in res.stderr
    res = morlaif("pm", "eval", "--adapter-root", str(root), "--fit", "best", check=False)
    assert res.returncode == 2 and "--fit 'best'" in res.stderr and "worst-kind" in res.stderr
    from pm_server.model.base import load_base
    from rigs.pm_packages import make_random_package

    make_random_package(root, load_base(str(tiny_encoder_dir)), "politeness")
    res = morlaif("pm", "eval", "--adapter-root", str(root), "--base", str(tiny_encoder_dir), "--principles",
                  "politeness,factuality", check=False)  # fmt: skip
    assert res.returncode == 2 and "no package for factuality" in res.stderr and "found: politeness" in res.stderr
    res = morlaif("pm", "eval", "--adapter-root", str(root), "--base", str(tiny_encoder_dir), check=False)
    assert res.returncode == 2 and "nothing to evaluate" in res.stderr
    res = morlaif("pm", "eval", "--adapter-root", str(root), "--base", str(tiny_encoder_dir), "--validation-only",
                  "--data", str(write_pairs(tmp_path / "p.jsonl", politeness_pairs(20))), check=False)  # fmt: skip
    assert res.returncode == 2 and "records no validation split" in res.stderr
    res = morlaif("pm", "eval", "--adapter-root", str(root), "--base", str(tiny_encoder_dir),
                  "--check", str(tmp_path / "p.jsonl"), check=False)  # fmt: skip
    assert res.returncode == 2 and "--check scores the reward fitted on the --human pairs" in res.stderr
    data, again = str(tmp_path / "p.jsonl"), str(tmp_path / "sub" / ".." / "p.jsonl")  # one file, two spellings
    (tmp_path / "sub").mkdir()
    res = morlaif("pm", "eval", "--adapter-root", str(root), "--base", str(tiny_encoder_dir),
                  "--data", data, "--data", again, check=False)  # fmt: skip
    assert res.returncode == 2 and f"--data {again} is given twice (first as {data})" in res.stderr
    assert "Traceback" not in res.stderr


def test_an_unreachable_store_is_a_clear_error_without_the_password(tmp_path):
    url = "postgresql+psycopg://u:hunter2secret@127.0.0.1:1/nodb"
    res = morlaif("pm", "train", "--principle", "politeness", "--store", url, check=False)
    assert res.returncode == 2 and "cannot open the label store" in res.stderr
    assert "hunter2secret" not in res.stderr and "Traceback" not in res.stderr


def test_length_correct_writes_a_new_version_that_the_server_serves_corrected(tmp_path, tiny_encoder_dir, live_server):
    # labels with no signal but length: the longer reply is chosen in 3 pairs of 4, so a PM trained without the
    # length-balanced weights learns "longer wins", and is wrong wherever the shorter reply was chosen
    rng = random.Random(5)
    pairs = []
    for i in range(240):
        short, long_ = sentence(rng, rng.randint(2, 5)), sentence(rng, rng.randint(8, 14))
        chosen, rejected = (long_, short) if i % 4 else (short, long_)
        pairs.append(Pair(prompt=f"q{i}", chosen=chosen, rejected=rejected, principle="politeness"))
    data = write_pairs(tmp_path / "lengthy.jsonl", pairs)
    root = tmp_path / "adapters"
    # pm train --length-correct: the package, then its corrected version (as `pm length-correct` writes it)
    res = morlaif("pm", "train", "--principle", "politeness", "--data", str(data), "--base", str(tiny_encoder_dir),
                  "--out-root", str(root), "--run-dir", str(tmp_path / "run"), "--version", "v1", "--length-correct",
                  "--no-length-balance", *FAST)  # fmt: skip
    assert "length coefficient" in res.stdout and "validation after" in res.stdout, res.stdout
    old = json.loads((root / "politeness" / "v1" / "principle.json").read_text())
    new = json.loads((root / "politeness" / "v1-lc" / "principle.json").read_text())
    coef = new["calibration"]["length_coef"]
    assert coef > 0.0  # it leans on length, and the correction takes it out of the served score
    lc = new["metrics"]["length_correction"]["train"]
    assert lc["before"]["shorter_better"]["accuracy"] < 0.5 < lc["after"]["shorter_better"]["accuracy"]
    assert old["calibration"]["length_coef"] == 0.0
    assert coef == pytest.approx(new["metrics"]["length_correction"]["length_coef"], abs=1e-6)
    assert new["provenance"]["length_correction"]["from_version"] == "v1"
    assert new["provenance"]["date"] == old["provenance"]["date"] and new["provenance"]["length_correction"]["date"]
    # the coefficient is the criterion's on the training pairs, recomputed here from the package's own data
    scorer = PackageScorer(load_base(str(tiny_encoder_dir)), root)
    scorer.load("politeness")  # the newest version: v1-lc
    train, val = package_pairs(new["provenance"], "politeness")
    raw = scorer.pair_scores("politeness", train, normalized=False)
    d = torch.tensor([length_feature(p.chosen) - length_feature(p.rejected) for p in train], dtype=torch.float64)
    assert fit_length_coef(labelled_margins(raw, train), d, min_pairs=10) == pytest.approx(coef, abs=1e-6)
    # calibrated on validation: the corrected scores are standardised there
    s = scorer.pair_scores("politeness", val)
    flat = torch.cat([s[:, 0], s[:, 1]])
    assert float(flat.mean()) == pytest.approx(0.0, abs=1e-4) and float(flat.std()) == pytest.approx(1.0, abs=1e-4)
    # the server serves (raw - coef * ln(1 + chars) - mean) / std, and raw_scores stay the head's output
    server = live_server(
        create_app(ServerSettings(base_model=str(tiny_encoder_dir), adapter_root=root, insecure_dev=True))
    ).start()
    items = [{"prompt": p.prompt, "response": r} for p in val[:6] for r in (p.chosen, p.rejected)]
    body = httpx.post(server.url + "/v1/score", json={"items": items, "principles": ["politeness"]}, timeout=30).json()
    cal = Calibration(**new["calibration"])
    for item, out in zip(items, body["results"], strict=True):
        raw_score = out["raw_scores"]["politeness"]
        want = (raw_score - coef * math.log1p(len(item["response"])) - cal.mean) / cal.std
        assert out["scores"]["politeness"] == pytest.approx(want, abs=1e-5)
    # a second run would overwrite: refused; changed training data: refused, naming the file
    cmd = ["pm", "length-correct", "politeness", "--adapter-root", str(root), "--base", str(tiny_encoder_dir),
           "--device", "cpu"]  # fmt: skip
    again = morlaif(*cmd, "--from-version", "v1", check=False)
    assert again.returncode == 2 and "v1-lc exists: give another --version" in again.stderr
    twice = morlaif(*cmd, check=False)  # the newest is v1-lc: correcting a corrected package is refused
    assert twice.returncode == 2 and "politeness v1-lc is already length-corrected" in twice.stderr
    assert "--from-version v1" in twice.stderr and not (root / "politeness" / "v1-lc-lc").exists()
    pooled = morlaif("pm", "train", "--principle", "single_pm", "--pool", "--length-correct", "--data", str(data),
                     check=False)  # fmt: skip
    assert pooled.returncode == 2 and "a --pool package has none of its own" in pooled.stderr
    data.write_text(data.read_text() + data.read_text().splitlines(keepends=True)[0])
    changed = morlaif(*cmd, "--from-version", "v1", "--version", "v2", check=False)
    assert changed.returncode == 2 and f"{data}: changed since politeness was trained on it" in changed.stderr
    assert "Traceback" not in changed.stderr
