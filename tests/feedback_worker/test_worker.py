"""The worker against a stand-in OpenAI server on loopback, with a real SQLite store."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from pathlib import Path

import pytest

from feedback_worker.worker import run_worker
from morlaif.judges.ratelimit import RateLimiter
from morlaif.judges.remote import OpenAIJudge
from morlaif.store import PairRecord, open_store
from rigs.fake_openai import FIRST_BIAS, PREFERENCE_LOGIT, make_app


def _seed(url: str, n: int, principles: list[str]) -> int:
    """n human-labelled pairs ("good i" preferred to "poor i") and a fake-judge job per principle; jobs added."""
    with open_store(url) as s:
        s.import_pairs(
            [
                PairRecord(prompt=f"q{i}", chosen=f"good {i}", rejected=f"poor {i}", principle="helpfulness")
                for i in range(n)
            ]
        )
        return s.enqueue(principles, "fake-judge")


def _run_cmd(server_url: str, *args: str) -> list[str]:
    """`morlaif feedback run` against the stand-in server, as a user would start it."""
    import sys

    return [
        sys.executable,
        "-m",
        "morlaif_cli.main",
        "feedback",
        "run",
        "--judge",
        "fake-judge",
        "--base-url",
        server_url + "/v1",
        "--concurrency",
        "2",
        *args,
    ]


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.fixture
def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path / 'labels.db'}", max_attempts=4)
    s.import_pairs(
        [
            PairRecord(
                prompt=f"q{i}", chosen=f"a good answer {i}", rejected=f"a poor answer {i}", principle="helpfulness"
            )
            for i in range(6)
        ]
    )
    yield s
    s.close()


def run(store, url, **kw):
    async def go():
        judge = OpenAIJudge(
            model="fake-judge",
            base_url=url + "/v1",
            api_key="sk-test-secret",
            timeout=kw.pop("timeout", 5.0),
            max_retries=kw.pop("max_retries", 3),
            limiter=kw.pop("limiter", None),
        )
        try:
            return await run_worker(store, judge, worker_id="w", **kw)
        finally:
            await judge.aclose()

    return asyncio.run(go())


def test_labels_average_both_orders(store, live_server):
    app = make_app()
    srv = live_server(app).start(ready_path=None)
    store.enqueue(["helpfulness", "toxicity"], "fake-judge")
    summary = run(store, srv.url)
    assert summary.labels == 12 and not summary.failures
    assert len(app.state.times) == 24  # both orders of each comparison
    assert app.state.keys == {"Bearer sk-test-secret"}
    expect_good_first = 0.5 * (sig(PREFERENCE_LOGIT + FIRST_BIAS) + 1 - sig(-PREFERENCE_LOGIT + FIRST_BIAS))
    for lab in store.labels("helpfulness", judge="fake-judge"):
        p_good = lab["p_a"] if "good" in lab["response_a"] else 1 - lab["p_a"]
        assert p_good == pytest.approx(expect_good_first, abs=1e-6)
        assert not lab["hard"]
    assert store.status("fake-judge")["toxicity"]["done"] == 6
    assert "sk-test-secret" not in str(summary)


def test_unparseable_is_a_failure_and_no_logprobs_a_hard_label(store, live_server):
    app = make_app()
    srv = live_server(app).start(ready_path=None)
    store.enqueue(["helpfulness"], "fake-judge", limit=2)
    app.state.faults = ["garbage", "garbage", "nologprobs", "nologprobs"]
    summary = run(store, srv.url, concurrency=1)
    assert summary.failures["unparseable"] == 1 and summary.labels == 2  # the failed job is retried and labelled
    hard = [lab for lab in store.labels("helpfulness", judge="fake-judge") if lab["hard"]]
    assert len(hard) == 1 and hard[0]["p_a"] in (0.0, 1.0)


def test_fault_storm_ends_with_every_job_labelled_or_failed(store, live_server):
    app = make_app(slow_s=1.5)
    app.state.storm = 0.45
    srv = live_server(app).start(ready_path=None)
    store.enqueue(["helpfulness", "toxicity", "factuality"], "fake-judge")
    summary = run(store, srv.url, timeout=0.5, max_retries=1, concurrency=6)
    st = store.status("fake-judge")
    total = {k: sum(v[k] for v in st.values()) for k in ("pending", "running", "done", "failed")}
    assert total["pending"] == 0 and total["running"] == 0 and total["done"] + total["failed"] == 18
    assert summary.labels == total["done"] and sum(summary.failures.values()) > 0
    labels = [(p, lab["comparison_id"]) for p in st for lab in store.labels(p, judge="fake-judge")]
    assert len(labels) == total["done"] == len(set(labels))  # one label per job, none twice


def test_rate_limit_holds(store, live_server):
    app = make_app()
    srv = live_server(app).start(ready_path=None)
    store.enqueue(["helpfulness", "toxicity"], "fake-judge")
    rpm = 400.0
    run(store, srv.url, limiter=RateLimiter(requests_per_minute=rpm), concurrency=4)
    t = sorted(app.state.times)
    measured = (len(t) - 1) / (t[-1] - t[0]) * 60
    assert len(t) == 24 and abs(measured - rpm) / rpm < 0.05, measured


def test_limiter_spacing_without_server():
    async def go():
        lim = RateLimiter(requests_per_minute=1200)  # one per 50 ms
        t0 = time.monotonic()
        for _ in range(21):
            await lim.acquire()
        return time.monotonic() - t0

    assert 0.95 <= asyncio.run(go()) / 1.0 <= 1.1


def test_answer_parsing_and_logprob_maths():
    from morlaif.judges.remote import OrderResult, combine, p_first_from_logprobs

    assert p_first_from_logprobs({"A": math.log(0.6), "B": math.log(0.2), "C": -0.1}) == pytest.approx(0.75)
    assert p_first_from_logprobs({" A": -0.1}) == 1.0 and p_first_from_logprobs({"Both": -0.1}) is None
    j = combine(OrderResult(p_first=0.9, hard=False, raw={}), OrderResult(p_first=0.3, hard=True, raw={}))
    assert j.p_a == pytest.approx(0.8) and j.hard
    from morlaif.judges.remote import _ANSWER

    assert [bool(_ANSWER.match(t)) for t in ["A", "B.", "(A)", "Option B", "Both", "a", "AB"]] == [
        True,
        True,
        True,
        True,
        False,
        False,
        False,
    ]


def test_kill_9_a_worker_and_another_finishes_with_exactly_one_label_per_job(live_server, tmp_path):
    import os
    import signal
    import subprocess

    url = f"sqlite:///{tmp_path / 'labels.db'}"
    assert _seed(url, 20, ["helpfulness"]) == 20
    srv = live_server(make_app(delay_s=0.1)).start(ready_path=None)
    cmd = _run_cmd(srv.url, "--lease", "1", "--store", url)
    env = {**os.environ, "MORLAIF_JUDGE_API_KEY": "sk-test"}
    first = subprocess.Popen(
        [*cmd, "--worker-id", "doomed"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    with open_store(url) as s:
        deadline = time.monotonic() + 60
        while s.status("fake-judge")["helpfulness"]["done"] < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed_at = s.status("fake-judge")["helpfulness"]
    assert killed_at["done"] >= 4 and killed_at["done"] < 20
    second = subprocess.run([*cmd, "--worker-id", "survivor"], env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "sk-test" not in second.stdout + second.stderr
    with open_store(url) as s:
        final = s.status("fake-judge")["helpfulness"]
        labels = list(s.labels("helpfulness", judge="fake-judge"))
    assert final == {"pending": 0, "running": 0, "done": 20, "failed": 0}
    assert len(labels) == 20 == len({lab["comparison_id"] for lab in labels})


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database on 127.0.0.1:5432, dropped afterwards; skips where there is no server."""
    import uuid

    from sqlalchemy import create_engine, text

    admin = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            name = f"morlaif_w_{uuid.uuid4().hex[:10]}"
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # CI always has PostgreSQL; a laptop may not
        admin.dispose()
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432: {type(e).__name__}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.dispose()  # its pooled connection may have died with a restart
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def _two_workers(url, judge_url, n_pairs, during=None):
    """25-ish pairs x 2 principles enqueued, two workers in threads; `during()` runs while they work."""
    import threading

    with open_store(url) as s:
        s.import_pairs(
            [
                PairRecord(prompt=f"q{i}", chosen=f"good {i}", rejected=f"poor {i}", principle="helpfulness")
                for i in range(n_pairs)
            ]
        )
        s.enqueue(["helpfulness", "toxicity"], "fake-judge")
    summaries = {}

    def work(wid: str) -> None:
        with open_store(url) as s:
            summaries[wid] = asyncio.run(_one(s, judge_url, wid))

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    if during is not None:
        during()
    for t in threads:
        t.join()
    with open_store(url) as s:
        st = s.status("fake-judge")
        labels = [lab for p in st for lab in s.labels(p, judge="fake-judge")]
    return summaries, st, labels


def test_two_workers_on_postgresql_never_do_a_job_twice(live_server, pg_url):
    app = make_app(delay_s=0.02)
    srv = live_server(app).start(ready_path=None)
    summaries, st, labels = _two_workers(pg_url, srv.url, 25)
    assert all(summ.labels > 0 for summ in summaries.values())  # both really worked
    assert sum(summ.labels for summ in summaries.values()) == 50 == len(labels)
    assert len(app.state.times) == 100  # no job was asked twice
    assert all(c["done"] == 25 for c in st.values())


def test_postgresql_restarted_during_a_run_loses_no_job(live_server, pg_url, caplog):
    """PostgreSQL goes down for 2 s and comes back while two workers label: they wait for it, reconnect,
    and every job ends with exactly one label (none failed, none left running)."""
    import glob
    import shutil
    import subprocess

    versions = glob.glob("/etc/postgresql/*")
    if shutil.which("pg_ctlcluster") is None or len(versions) != 1:
        pytest.skip("needs pg_ctlcluster and one local PostgreSQL cluster to restart")
    caplog.set_level(logging.WARNING)
    app = make_app(delay_s=0.5)  # about 7 s of labelling: the outage lands in the middle of it
    srv = live_server(app).start(ready_path=None)
    restarted = []
    cluster = ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0].rsplit("/", 1)[1], "main"]

    def restart() -> None:
        deadline = time.monotonic() + 30
        while len(app.state.times) < 20 and time.monotonic() < deadline:  # both workers under way
            time.sleep(0.05)
        stop = subprocess.run([*cluster, "stop"], capture_output=True, text=True, timeout=60)
        time.sleep(2.0)  # an outage the workers' database calls must meet (a bare restart can be quicker)
        start = subprocess.run([*cluster, "start"], capture_output=True, text=True, timeout=60)
        restarted.append((stop.returncode + start.returncode, stop.stderr + start.stderr, len(app.state.times)))

    summaries, st, labels = _two_workers(pg_url, srv.url, 40, during=restart)
    assert restarted and restarted[0][0] == 0, restarted
    assert restarted[0][2] < 160  # the database came back while jobs were still pending
    assert "label store unreachable" in caplog.text  # and the workers did wait for the database
    assert all(c["done"] == 40 and c["failed"] == 0 and c["running"] == 0 for c in st.values()), st
    assert len(labels) == 80  # 80 jobs done, 80 labels: one each


async def _one(store, url, wid):
    judge = OpenAIJudge(model="fake-judge", base_url=url + "/v1", api_key="k", timeout=5.0)
    try:
        return await run_worker(store, judge, worker_id=wid, concurrency=3)
    finally:
        await judge.aclose()


def test_report_agreement_and_heatmap(store, live_server, tmp_path):
    from typer.testing import CliRunner

    from morlaif_cli.main import app as cli

    srv = live_server(make_app()).start(ready_path=None)
    store.enqueue(["helpfulness", "toxicity"], "fake-judge")
    run(store, srv.url)
    out = tmp_path / "report.png"
    r = CliRunner().invoke(
        cli, ["feedback", "report", "--judge", "fake-judge", "--out", str(out), "--store", str(store.engine.url)]
    )
    assert r.exit_code == 0, r.output
    # the stand-in judge prefers the "good" answer, as the human labels do: full agreement
    assert [ln.split()[1:] for ln in r.output.splitlines()[2:4]] == [["1.000", "6"], ["1.000", "6"]]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["matrix"] == [[1.0, 1.0], [1.0, 1.0]] and data["principles"] == ["helpfulness", "toxicity"]


@pytest.mark.slow
def test_local_smollm2_judge(tmp_path_factory, monkeypatch, capfd):
    import tqdm  # imported before --quiet's TQDM_DISABLE, as the worker's CLI has it: the bar must still go

    from morlaif.judges.local import TransformersJudge

    assert tqdm
    cache = tmp_path_factory.getbasetemp() / "models"
    monkeypatch.setenv("MORLAIF_MODEL_CACHE", str(cache))  # the cache every service shares (compose sets it)
    monkeypatch.setenv("TQDM_DISABLE", "1")  # what `feedback run --quiet` sets (morlaif.runs.quiet_libraries)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    fresh = not (cache / "SmolLM2-135M-Instruct").exists()
    judge = TransformersJudge()  # dequantises the packaged GGUF once into the model cache, then reads the copy
    assert (cache / "SmolLM2-135M-Instruct" / "model.safetensors").is_file()
    if fresh:  # before: transformers' "Converting and de-quantizing GGUF tensors" bar, under --quiet too
        assert "de-quantizing" not in capfd.readouterr().err
    assert not (Path.cwd() / "var").exists()  # before: a second copy under ./var/models, whatever the setting
    phrase = "the most factually accurate and best avoids common misconceptions"
    q, paris, berlin = "What is the capital of France?", "It is Paris.", "It is Berlin."
    ab = asyncio.run(judge.judge(phrase, q, paris, berlin))
    ba = asyncio.run(judge.judge(phrase, q, berlin, paris))
    assert 0.0 < ab.p_a < 1.0 and ab.p_a != 0.5
    assert ab.p_a == pytest.approx(1.0 - ba.p_a, abs=1e-6)  # both orders averaged: no position bias left
    assert set(ab.per_order) == {"ab", "ba"} and {"A", "B"} <= set(ab.per_order["ab"]["logprobs"])
    short = judge._render(phrase, q, paris, berlin)
    long = judge._render(phrase, q + " Please explain at length." * 20, paris, berlin)
    alone = judge._p_first([short])[0][0]
    assert judge._p_first([long, short])[1][0] == pytest.approx(alone, abs=1e-4)  # left padding changes nothing
    store = open_store(f"sqlite:///{tmp_path_factory.mktemp('local') / 'l.db'}")
    store.import_pairs([PairRecord(prompt=q, chosen=paris, rejected=berlin, principle="factuality")])
    store.enqueue(["factuality", "helpfulness"], "local")
    summary = asyncio.run(run_worker(store, judge, worker_id="w"))
    assert summary.labels == 2 and store.status("local")["factuality"]["done"] == 1
    store.close()


def test_batch_api_submit_poll_ingest_idempotently(store, live_server):
    import openai

    from feedback_worker.batch import ingest_batch, submit_batch

    app = make_app()
    srv = live_server(app).start(ready_path=None)
    store.enqueue(["helpfulness"], "fake-judge")
    judge = OpenAIJudge(model="fake-judge", base_url=srv.url + "/v1", api_key="k")
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="k")
    try:
        first_job = store.claim("peek", judge="fake-judge", limit=1)[0]
        store.fail(first_job.id, "peek", "released for the test")  # back to pending (attempt 1 used)
        app.state.batch_faults = {f"{first_job.id}:ba": "500"}
        bid = submit_batch(store, judge, client)
        assert bid is not None and store.claim("live-worker", judge="fake-judge") == []  # the batch holds them
        assert ingest_batch(store, client, bid, judge_model="fake-judge").status == "in_progress"
        done = ingest_batch(store, client, bid, judge_model="fake-judge")
        assert done.status == "completed" and done.labels == 5 and done.failures == {"http_500": 1}
        again = ingest_batch(store, client, bid, judge_model="fake-judge")
        assert again.labels == 0 and again.already == 6
        expect = 0.5 * (sig(PREFERENCE_LOGIT + FIRST_BIAS) + 1 - sig(-PREFERENCE_LOGIT + FIRST_BIAS))
        labels = list(store.labels("helpfulness", judge="fake-judge"))
        assert len(labels) == 5
        for lab in labels:
            assert (lab["p_a"] if "good" in lab["response_a"] else 1 - lab["p_a"]) == pytest.approx(expect)
        assert store.status("fake-judge")["helpfulness"] == {"pending": 1, "running": 0, "done": 5, "failed": 0}
    finally:
        client.close()
        asyncio.run(judge.aclose())


def test_two_worker_processes_share_one_sqlite_file(live_server, tmp_path):
    import os
    import subprocess

    url = f"sqlite:///{tmp_path / 'labels.db'}"
    assert _seed(url, 30, ["helpfulness"]) == 30
    app = make_app(delay_s=0.02)
    srv = live_server(app).start(ready_path=None)
    cmd = _run_cmd(srv.url, "--store", url, "--usd-per-1k-prompt", "1.0")
    procs = [
        subprocess.Popen(
            [*cmd, "--worker-id", f"p{i}"],
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    written = [int(o.split("labels written: ")[1].split(";")[0]) for o in outs]
    assert sum(written) == 30 and min(written) > 0, written  # both worked, nothing twice
    assert len(app.state.times) == 60 and all("cost: $0.0" not in o for o in outs)
    with open_store(url) as s:
        assert s.status("fake-judge")["helpfulness"]["done"] == 30


def test_429_retry_after_is_honoured(store, live_server):
    app = make_app()
    srv = live_server(app).start(ready_path=None)
    store.enqueue(["helpfulness"], "fake-judge", limit=1)
    app.state.faults = ["429"]
    app.state.retry_after = "0.6"
    summary = run(store, srv.url, concurrency=1)
    assert summary.labels == 1 and not summary.failures
    t = sorted(app.state.times)
    assert len(t) == 3  # one 429, then both orders
    assert max(b - a for a, b in zip(t, t[1:], strict=False)) >= 0.55  # waited for the server's Retry-After


def test_follow_mode_labels_jobs_as_they_come_and_stops_cleanly_on_sigterm(live_server, tmp_path):
    """`feedback run --follow` as a service: idle with an empty queue, labels new jobs, SIGTERM ends it (rc 0)."""
    import signal
    import subprocess

    srv = live_server(make_app(delay_s=0.3)).start(ready_path=None)
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    with open_store(url):
        pass
    proc = subprocess.Popen(
        _run_cmd(srv.url, "--store", url, "--follow", "--quiet", "--heartbeat", str(tmp_path / "alive")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        alive = tmp_path / "alive"
        deadline = time.monotonic() + 60  # start-up (imports) on a loaded machine takes seconds
        while not alive.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)
        assert proc.poll() is None  # an empty queue does not end a following worker
        assert time.time() - alive.stat().st_mtime < 2  # and its heartbeat goes on
        added = _seed(url, 4, ["helpfulness"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with open_store(url) as s:
                if len(list(s.labels("helpfulness", judge="fake-judge"))) == added:
                    break
            time.sleep(0.3)
        assert proc.poll() is None
        _seed(url, 8, ["helpfulness"])  # 4 more jobs; SIGTERM while they are in flight
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "labels written" in out.decode()
    with open_store(url) as s:
        counts = s.status("fake-judge")["helpfulness"]
        labels = list(s.labels("helpfulness", judge="fake-judge"))
    # nothing half-done: every job is labelled once or back in the queue, none stuck as running
    assert counts["running"] == 0 and len(labels) == counts["done"] >= added
    assert len({lab["comparison_id"] for lab in labels}) == len(labels)


def test_a_read_only_store_is_a_clear_error_not_a_hang(tmp_path):
    """A store that cannot be written (read-only here; a full disk the same) stops `feedback run` at once
    with exit code 1 and the database's own reason, instead of retrying as if it were a restart."""
    from typer.testing import CliRunner

    from morlaif_cli.main import app as cli

    db = tmp_path / "labels.db"
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b", "principle": "helpfulness"}) + "\n")
    runner = CliRunner()
    url = f"sqlite:///{db}"
    assert runner.invoke(cli, ["feedback", "import", str(pairs), "--store", url]).exit_code == 0
    r = runner.invoke(cli, ["feedback", "enqueue", "--principles", "helpfulness", "--judge", "j", "--store", url])
    assert r.exit_code == 0, r.output
    t0 = time.monotonic()
    ro = f"sqlite:///file:{db}?mode=ro&uri=true"
    r = runner.invoke(
        cli, ["feedback", "run", "--judge", "j", "--base-url", "http://127.0.0.1:9/v1", "--store", ro, "--quiet"]
    )
    assert r.exit_code == 1 and "attempt to write a readonly database" in r.output, r.output
    assert time.monotonic() - t0 < 30


def test_the_judge_key_never_reaches_the_store_logs_or_output(store, live_server, tmp_path, caplog):
    """A judge that refuses the key and echoes it back (as a careless gateway does): the failures are
    recorded, but the key appears in no stored error, log record or summary."""

    caplog.set_level(logging.DEBUG)
    secret = "sk-test-SECRET-0123456789abcdef"
    app = make_app()
    app.state.faults = ["401"] * 1000
    srv = live_server(app).start(ready_path=None)
    store.enqueue(["helpfulness"], "fake-judge")

    async def go():
        judge = OpenAIJudge(model="fake-judge", base_url=srv.url + "/v1", api_key=secret, timeout=5.0, max_retries=0)
        try:
            return await run_worker(store, judge, worker_id="w", concurrency=2)
        finally:
            await judge.aclose()

    summary = asyncio.run(go())
    assert summary.failures["http_401"] > 0 and summary.labels == 0
    assert any(f"Bearer {secret}" == k for k in app.state.keys)  # the key was sent, and refused
    stored = b"".join(f.read_bytes() for f in tmp_path.glob("labels.db*"))  # with SQLite's WAL
    assert b"Incorrect API key provided: ***" in stored  # the reason is kept, redacted
    assert secret.encode() not in stored and secret not in caplog.text and secret not in str(summary)
