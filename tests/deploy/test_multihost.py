"""The system over a network, on one machine: PostgreSQL in the root namespace, two feedback workers, the PM
server and a PPO trainer each on a host of its own (network namespaces joined by veth links on a bridge).

Labels flow from both workers into the one store, the PM server scores for the trainer, the trainer
completes a short run, and killing one worker with SIGKILL mid-run loses nothing: its leased jobs return
and every job ends with exactly one label.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

from morlaif.store import PairRecord, open_store
from rigs.fake_openai import make_app
from rigs.netlab import TcpRelay, wait_http_ok
from rigs.tiny_lm import word_prompts

BIN = Path(sys.executable).parent
MORLAIF = str(BIN / "morlaif")
KEYS = {"MORLAIF_API_KEY": "multihost-scoring-key-0123456789", "MORLAIF_ADMIN_KEY": "multihost-admin-key-0123456789"}
N_PAIRS, PRINCIPLES = 30, ["helpfulness", "harmlessness"]


@pytest.fixture
def pg_database():
    from sqlalchemy import create_engine, text

    admin = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
    name = f"morlaif_mh_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # CI always has PostgreSQL; a laptop may not
        admin.dispose()
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432: {type(e).__name__}")
    yield name
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def _labels(store) -> list[dict]:
    return [{**lab, "principle": p} for p in PRINCIPLES for lab in store.labels(p, judge="fake-judge")]


def _done(store) -> int:
    return sum(c["done"] for c in store.status("fake-judge").values())


def test_workers_server_and_trainer_on_five_hosts_lose_nothing_when_a_worker_dies(
    netlab, pg_database, live_server, tiny_encoder_dir, tiny_lm_dir, tmp_path
):
    local_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg_database}"
    with open_store(local_url) as s:
        s.import_pairs(
            [
                PairRecord(prompt=f"q{i}", chosen=f"a good answer {i}", rejected=f"a poor one {i}", principle=p)
                for i in range(N_PAIRS)
                for p in PRINCIPLES
            ]
        )
        jobs = s.enqueue(PRINCIPLES, "fake-judge")
    assert jobs == N_PAIRS * len(PRINCIPLES)
    # the judge API (a stand-in) and PostgreSQL are reached at the root namespace's address on the lab
    judge_app = make_app(delay_s=0.5)
    judge = live_server(judge_app, host=netlab.gateway).start(ready_path=None)
    with TcpRelay(netlab.gateway, ("127.0.0.1", 5432)) as relay:
        store_url = f"postgresql+psycopg://postgres@{netlab.gateway}:{relay.port}/{pg_database}"
        pm, w1, w2, ppo = (netlab.add_host(n) for n in ("pm", "w1", "w2", "ppo"))

        rules = tmp_path / "rules.json"
        rules.write_text(json.dumps([{"name": "says_good", "kind": "regex", "pattern": r"\bgood\b"}]))
        server_log = tmp_path / "pm.log"
        server = pm.popen(
            [MORLAIF, "serve", "--base", str(tiny_encoder_dir), "--adapter-root", str(tmp_path / "none"),
             "--rules-file", str(rules), "--host", pm.ip, "--port", "8000"],
            env=KEYS, log=server_log,
        )  # fmt: skip
        why = wait_http_ok(f"http://{pm.ip}:8000/readyz", server)
        assert why is None, f"PM server: {why}\n{server_log.read_text()[-3000:]}"
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in word_prompts(12)))
        run = tmp_path / "run"
        trainer = ppo.popen(
            [MORLAIF, "ppo", "train", "--url", f"http://{pm.ip}:8000", "--model", str(tiny_lm_dir), "--prompts",
             str(prompts), "--steps", "3", "--out", str(run), "--quiet", "--set", "ppo.batch_size=4",
             "--set", "ppo.mini_batch_size=2", "--set", "generation.max_new_tokens=4", "--set", "model.lora=false",
             "--set", "data.eval_fraction=0"],
            env={"MORLAIF_API_KEY": KEYS["MORLAIF_API_KEY"]}, log=tmp_path / "ppo.log",
        )  # fmt: skip
        worker_cmd = [MORLAIF, "feedback", "run", "--judge", "fake-judge", "--base-url", judge.url + "/v1",
                      "--store", store_url, "--lease", "3", "--concurrency", "2", "--follow", "--quiet"]  # fmt: skip
        # each worker its own judge key, so the judge's log tells who asked what
        workers = {
            h.name: h.popen(worker_cmd, env={"MORLAIF_JUDGE_API_KEY": f"key-{h.name}"}, log=tmp_path / f"{h.name}.log")
            for h in (w1, w2)
        }
        watch = open_store(local_url)

        # kill -9 one worker once both are at work: its leased jobs must come back
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (
            _done(watch) < 12 or min(judge_app.state.by_key[f"Bearer key-{w}"] for w in ("w1", "w2")) < 8
        ):
            time.sleep(0.2)
        workers["w1"].send_signal(signal.SIGKILL)
        workers["w1"].wait(10)
        done_at_kill = _done(watch)
        assert done_at_kill < jobs, "the run ended before the kill: make the judge slower"

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and _done(watch) < jobs:
            assert workers["w2"].poll() is None, (tmp_path / "w2.log").read_text()[-3000:]
            time.sleep(0.5)
        assert trainer.wait(300) == 0, (tmp_path / "ppo.log").read_text()[-3000:]
        workers["w2"].send_signal(signal.SIGTERM)
        assert workers["w2"].wait(60) == 0, (tmp_path / "w2.log").read_text()[-3000:]

    labels = _labels(watch)
    status = watch.status("fake-judge")
    watch.close()
    assert len(labels) == jobs  # every job labelled ...
    assert len({(lab["comparison_id"], lab["principle"]) for lab in labels}) == jobs  # ... exactly once
    assert all(c["done"] == N_PAIRS and c["running"] == c["pending"] == c["failed"] == 0 for c in status.values())
    # both workers labelled: the survivor's summary counts only its own labels
    w2_summary = (tmp_path / "w2.log").read_text()
    w2_labels = int(w2_summary.split("labels written: ")[1].split(";")[0])
    assert 0 < w2_labels < jobs and done_at_kill > 0
    # the trainer's rewards came from the PM server's host, over the link
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    access = [line for line in server_log.read_text().splitlines() if "POST /v1/score" in line]
    assert len(access) >= 3 and all(ppo.ip in line and " 200" in line for line in access)
