"""The label store on SQLite and on a real PostgreSQL: import, enqueue, leases, exactly one label per job."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from sqlalchemy import create_engine, text

from morlaif.store import LabelIn, LeaseLost, PairRecord, open_store
from morlaif.store.importers import ImportError_, read_hh, read_pair_jsonl, split_hh

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _pg_available() -> bool:
    engine = create_engine(PG_ADMIN)
    try:
        with engine.connect() as c:
            c.execute(text("select 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


@pytest.fixture
def stores():
    """open_store, closing every store the test opened at the end."""
    opened = []

    def _open(url, **kw):
        s = open_store(url, **kw)
        opened.append(s)
        return s

    yield _open
    for s in opened:
        s.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'labels.db'}"
        return
    if not _pg_available():
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432 (start it: pg_ctlcluster ... main start)")
    # a database of its own per test, dropped afterwards
    name = f"morlaif_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def pairs(n: int, principle: str = "helpfulness") -> list[PairRecord]:
    return [
        PairRecord(prompt=f"q{i}", chosen=f"good {i}", rejected=f"bad {i}", principle=principle, source="t")
        for i in range(n)
    ]


def test_import_is_idempotent_and_order_free(url, stores):
    store = stores(url)
    first = store.import_pairs(pairs(5))
    assert (first.prompts, first.responses, first.comparisons, first.labels) == (5, 10, 5, 5)
    again = store.import_pairs(pairs(5))
    assert (again.prompts, again.responses, again.comparisons, again.labels) == (0, 0, 0, 0)
    # the same pair the other way round is the same comparison (and the same human label)
    swapped = [
        PairRecord(prompt=p.prompt, chosen=p.chosen, rejected=p.rejected, principle=p.principle) for p in pairs(5)
    ]
    assert store.import_pairs(swapped).comparisons == 0
    labels = list(store.labels("helpfulness"))
    assert len(labels) == 5
    for lab in labels:  # the human label points at "good", whichever side it was stored on
        good_is_a = lab["response_a"].startswith("good")
        assert lab["p_a"] == (1.0 if good_is_a else 0.0) and lab["judge"] == "human"
    # a second principle over the same comparisons adds labels only
    more = store.import_pairs(pairs(5, "factuality"))
    assert (more.comparisons, more.labels) == (0, 5)
    # running the migrations again on an up-to-date database is a no-op
    assert stores(url).status() == {}


def test_enqueue_claim_complete_fail(url, stores):
    store = stores(url, max_attempts=2)
    store.import_pairs(pairs(4))
    assert store.enqueue(["helpfulness", "toxicity"], "judge-x") == 8
    assert store.enqueue(["helpfulness", "toxicity"], "judge-x") == 0
    jobs = store.claim("w1", limit=3, lease_s=60)
    assert len(jobs) == 3 and all(j.attempts == 1 and j.prompt.startswith("q") for j in jobs)
    store.complete(jobs[0].id, "w1", LabelIn(p_a=0.8, per_order={"ab": -0.2, "ba": -1.5}, judge_model="m"))
    with pytest.raises(LeaseLost):
        store.complete(jobs[0].id, "w1", LabelIn(p_a=0.8))  # done: a second label is refused
    with pytest.raises(LeaseLost):
        store.complete(jobs[1].id, "someone-else", LabelIn(p_a=0.1))
    assert store.fail(jobs[1].id, "w1", "judge said 'C'") == "pending"
    again = [j for j in store.claim("w2", limit=10) if j.id == jobs[1].id]
    assert again and again[0].attempts == 2
    assert store.fail(jobs[1].id, "w2", "judge said 'C' again") == "failed"
    st = store.status("judge-x")
    assert st["helpfulness"]["done"] == 1 and st["helpfulness"]["failed"] == 1
    assert sum(st["helpfulness"].values()) == 4 and sum(st["toxicity"].values()) == 4
    with pytest.raises(ValueError):
        store.complete(jobs[2].id, "w1", LabelIn(p_a=1.5))


def test_expired_leases_return_and_dead_workers_stop_after_max_attempts(url, stores):
    store = stores(url, max_attempts=2)
    store.import_pairs(pairs(1))
    store.enqueue(["helpfulness"], "j")
    (job,) = store.claim("dies", limit=1, lease_s=0.2)
    assert store.claim("other", limit=1, lease_s=0.2) == []  # leased
    time.sleep(0.3)
    (again,) = store.claim("other", limit=1, lease_s=0.2)
    assert again.id == job.id and again.attempts == 2
    with pytest.raises(LeaseLost):
        store.complete(job.id, "dies", LabelIn(p_a=0.5))  # the first worker woke up too late
    time.sleep(0.3)
    assert store.claim("third", limit=1) == []
    st = store.status()["helpfulness"]
    assert st["failed"] == 1


def test_concurrent_workers_label_every_job_exactly_once(url, stores):
    store = stores(url)
    store.import_pairs(pairs(30))
    store.enqueue(["helpfulness", "toxicity"], "j")
    done: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        s = stores(url)  # its own engine and connections, as another process would have (closed at the end)
        while jobs := s.claim(name, limit=4, lease_s=30):
            for j in jobs:
                s.complete(j.id, name, LabelIn(p_a=0.5))
                with lock:
                    done.append(j.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(done) == sorted(set(done)) and len(done) == 60
    assert store.status()["helpfulness"]["done"] == 30
    assert len(list(store.labels("toxicity", judge="j"))) == 30


def test_export_soft_labels(url, stores, tmp_path):
    store = stores(url)
    store.import_pairs(pairs(2))
    store.enqueue(["helpfulness"], "j")
    for job in store.claim("w", limit=2):
        store.complete(job.id, "w", LabelIn(p_a=0.25))
    out = tmp_path / "helpfulness.jsonl"
    assert store.export("helpfulness", out, judge="j") == 2
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    for r in rows:  # p_a = 0.25: B is chosen with p = 0.75
        assert r["p"] == 0.75 and r["principle"] == "helpfulness" and {r["chosen"], r["rejected"]} >= {r["chosen"]}
    assert store.export("helpfulness", out) == 4  # human labels too


def test_importers(tmp_path):
    assert split_hh(
        "\n\nHuman: hi\n\nAssistant: a\n\nHuman: x\n\nAssistant: good",
        "\n\nHuman: hi\n\nAssistant: a\n\nHuman: x\n\nAssistant: bad",
    ) == ("\n\nHuman: hi\n\nAssistant: a\n\nHuman: x\n\nAssistant:", "good", "bad")
    # a response that runs on into made-up turns does not move the boundary
    got = split_hh("\n\nHuman: q\n\nAssistant: yes\n\nHuman: more\n\nAssistant: ok", "\n\nHuman: q\n\nAssistant: no")
    assert got == ("\n\nHuman: q\n\nAssistant:", "yes\n\nHuman: more\n\nAssistant: ok", "no")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b", "principle": "x"}\n{"prompt": "p"}\n')
    with pytest.raises(ImportError_, match=rf"{bad}:2: missing .*chosen"):
        list(read_pair_jsonl(bad))


def test_real_data_imports(tmp_path, stores, shared_data):
    hh = shared_data / "hh-rlhf" / "harmless-base-dev.jsonl.gz"
    store = stores(f"sqlite:///{tmp_path / 'l.db'}")
    stats = store.import_pairs(read_hh(hh, principle="harmlessness"))
    assert stats.records == 1876 and stats.labels == 1876
    pandalm = store.import_pairs(read_pair_jsonl(shared_data / "helpfulness_pandalm.jsonl"))
    assert pandalm.records == 792 and 0 < pandalm.comparisons <= 792
    assert store.import_pairs(read_hh(hh, principle="harmlessness")).labels == 0


def test_the_migrations_build_exactly_the_models_schema(url, stores):
    """Alembic's head and the ORM models agree (a column added to one and not the other fails here)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from morlaif.store.models import Base

    store = stores(url)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
