"""The dynamic batcher with the real engine on a tiny model: length sorting, budgets, admission."""

from __future__ import annotations

import random

import pytest

from pm_server.model.base import load_base
from pm_server.model.engine import Row, ScoringEngine
from pm_server.model.template import TemplateEncoder
from pm_server.serving.batcher import Batcher
from pm_server.serving.errors import Overloaded, TooLarge


@pytest.fixture(scope="module")
def engine_rows(tiny_encoder_dir, encoder_root):
    base = load_base(str(tiny_encoder_dir))
    engine = ScoringEngine(base)
    for n in ("helpfulness", "harmlessness"):
        engine.load_adapter(encoder_root / n / "v1", n)
    enc = TemplateEncoder(base.tokenizer, base.default_template)
    rng = random.Random(0)
    # an HH-like mix: mostly short turns, some long ones
    lengths = [rng.choice([8, 12, 20, 30, 45, 60, 90, 140, 200]) for _ in range(60)]
    rows = []
    for i, n in enumerate(lengths):
        e = enc.encode("word " * n, f"answer {i}")
        rows.append(Row(e.input_ids, e.token_type_ids, "helpfulness" if i % 2 else "harmlessness"))
    return engine, rows


def test_length_sorted_batches_cut_padding_and_keep_scores(engine_rows):
    engine, rows = engine_rows
    expect = [engine.score([r])[0] for r in rows]  # each row alone: no padding at all
    b = Batcher(engine, max_batch_tokens=2048, max_batch_rows=64, max_wait_s=0.5, max_queued_rows=1000)
    b.start()
    try:
        futures = [b.submit([r]) for r in rows]  # all queued within the max wait, in random length order
        got = [f.result(timeout=60)[0] for f in futures]
    finally:
        b.stop()
    assert got == pytest.approx(expect, abs=1e-4)
    ratio = b.padded_tokens / b.real_tokens
    assert ratio < 1.15, ratio
    assert b.batches < len(rows) / 3  # and still batches, not one forward per row
    # the same rows in arrival order, cut by the same budget, would pad far more: the sort is what helps
    naive_padded, batch = 0, []
    for r in rows:
        if batch and (len(batch) + 1) * max(len(x.input_ids) for x in [*batch, r]) > 2048:
            naive_padded += len(batch) * max(len(x.input_ids) for x in batch)
            batch = []
        batch.append(r)
    naive_padded += len(batch) * max(len(x.input_ids) for x in batch)
    assert naive_padded / b.real_tokens > ratio + 0.2


def test_requests_share_micro_batches(engine_rows):
    engine, rows = engine_rows
    same = [Row(rows[0].input_ids, rows[0].token_type_ids, a) for a in ("helpfulness", "harmlessness") * 15]
    b = Batcher(engine, max_batch_tokens=100_000, max_batch_rows=256, max_wait_s=0.3, max_queued_rows=1000)
    b.start()
    try:
        futures = [b.submit(same[i : i + 5]) for i in range(0, 30, 5)]
        for f in futures:
            assert len(f.result(timeout=60)) == 5
    finally:
        b.stop()
    # six requests of five rows, mixing two adapters, were answered by one forward
    assert b.batches == 1 and b.real_tokens == b.padded_tokens == 30 * len(rows[0].input_ids)


def test_admission_is_bounded(engine_rows):
    engine, rows = engine_rows
    b = Batcher(engine, max_batch_tokens=4096, max_batch_rows=8, max_wait_s=5.0, max_queued_rows=10)
    b.start()
    try:
        first = b.submit(rows[:6])
        with pytest.raises(Overloaded):
            b.submit(rows[6:12])
        with pytest.raises(TooLarge):
            b.submit(rows[:11])
        assert b.queued_rows == 6
        first.cancel()
    finally:
        b.stop()


def test_control_calls_run_between_batches(engine_rows):
    engine, rows = engine_rows
    b = Batcher(engine, max_batch_tokens=4096, max_batch_rows=8, max_wait_s=0.0, max_queued_rows=100)
    b.start()
    try:
        fut = b.submit(rows[:3])
        assert b.call(lambda: sorted(engine.adapters)).result(timeout=30) == ["harmlessness", "helpfulness"]
        assert len(fut.result(timeout=30)) == 3
        with pytest.raises(ZeroDivisionError):
            b.call(lambda: 1 / 0).result(timeout=30)
    finally:
        b.stop()


class _Recording:
    """The real engine, with the rows of every micro-batch and the prompt tokens it shared kept."""

    def __init__(self, engine: ScoringEngine) -> None:
        self.engine = engine
        self.batches: list[list[Row]] = []
        self.shared: list[int] = []

    @property
    def shares_prefixes(self) -> bool:
        return self.engine.shares_prefixes

    @property
    def last_prefix_tokens_saved(self) -> int:
        return self.engine.last_prefix_tokens_saved

    def score(self, rows):
        self.batches.append(list(rows))
        out = self.engine.score(rows)
        self.shared.append(self.engine.last_prefix_tokens_saved)
        return out


def _run_all(engine, requests, **budget):
    b = Batcher(engine, max_wait_s=0.5, max_queued_rows=1000, **budget)
    b.start()
    try:
        futures = [b.submit(r) for r in requests]  # all queued within the max wait
        return [f.result(timeout=120) for f in futures]
    finally:
        b.stop()


def test_an_items_principles_stay_in_one_micro_batch(engine_rows):
    """Rows of one input under several principles share its trunk: a cut never falls between them."""
    engine, rows = engine_rows
    rec = _Recording(engine)
    adapters = ("helpfulness", "harmlessness")
    requests = [[Row(r.input_ids, r.token_type_ids, a) for a in adapters] for r in rows[:30]]
    expect = [engine.score(q) for q in requests]
    # 5 rows a batch at most: a row-by-row cut would split every other item across two batches
    got = _run_all(rec, requests, max_batch_tokens=4096, max_batch_rows=5)
    assert [g for q in got for g in q] == pytest.approx([e for q in expect for e in q], abs=1e-4)
    assert len(rec.batches) >= 15
    for batch in rec.batches:
        by_input: dict[tuple[int, ...], int] = {}
        for r in batch:
            by_input[tuple(r.input_ids)] = by_input.get(tuple(r.input_ids), 0) + 1
        assert set(by_input.values()) == {2}, by_input  # both principles of each item, or none


@pytest.fixture(scope="module")
def decoder_group(tiny_decoder_dir, tmp_path_factory):
    from rigs.pm_packages import make_random_package

    root = tmp_path_factory.mktemp("group-adapters")
    names = ["helpfulness", "harmlessness", "factuality"]
    scratch = load_base(str(tiny_decoder_dir))  # the packages are made on a base of their own
    for i, n in enumerate(names):
        make_random_package(root, scratch, n, "v1", seed=300 + i)
    base = load_base(str(tiny_decoder_dir))
    engine = ScoringEngine(base)
    for n in names:
        engine.load_adapter(root / n / "v1", n)
    enc = TemplateEncoder(base.tokenizer, base.default_template)
    prompt = "Explain, step by step and with care, how a compiler turns source code into machine code. " * 3
    encoded = [enc.encode(prompt, f"Answer number {i}: it parses, then it emits.") for i in range(4)]
    assert len({tuple(e.input_ids[: e.prefix_tokens]) for e in encoded}) == 1 and encoded[0].prefix_tokens > 40
    return engine, names, encoded


def test_a_groups_prompt_is_budgeted_once_and_kept_together(decoder_group):
    """Four responses to one prompt under three principles (a PPO group): 12 rows whose padded size is over
    the budget but whose computed tokens (the prompt once per principle) fit go in one micro-batch, and the
    engine shares the prompt."""
    engine, names, encoded = decoder_group
    assert engine.shares_prefixes
    rows = [Row(e.input_ids, None, a, e.prefix_tokens) for e in encoded for a in names]  # item-major
    width, prefix = max(len(r.input_ids) for r in rows), encoded[0].prefix_tokens
    computed = len(rows) * width - (len(rows) - len(names)) * prefix
    assert computed < len(rows) * width // 2
    expect = engine.score(rows)
    rec = _Recording(engine)
    (got,) = _run_all(rec, [rows], max_batch_tokens=computed, max_batch_rows=64)
    assert got == pytest.approx(expect, abs=1e-4)
    assert len(rec.batches) == 1 and rec.shared[0] == (len(rows) - len(names)) * prefix


def test_a_group_over_the_budget_is_split_by_principle(decoder_group):
    """A group too large for one micro-batch is cut between principles, so each part still shares the prompt
    among the responses under each of its principles."""
    engine, names, encoded = decoder_group
    rows = [Row(e.input_ids, None, a, e.prefix_tokens) for e in encoded for a in names]
    width, prefix = max(len(r.input_ids) for r in rows), encoded[0].prefix_tokens
    per_principle = len(encoded) * width - (len(encoded) - 1) * prefix
    expect = engine.score(rows)
    rec = _Recording(engine)
    (got,) = _run_all(rec, [rows], max_batch_tokens=per_principle, max_batch_rows=64)
    assert got == pytest.approx(expect, abs=1e-4)
    assert [sorted({r.adapter for r in b}) for b in rec.batches] == [[n] for n in names]
    assert all(len(b) == len(encoded) for b in rec.batches)
    assert rec.shared == [(len(encoded) - 1) * prefix] * len(names)
