"""`morlaif sample`: responses of a tiny real causal LM (in process) or of an OpenAI-compatible stand-in server
(over real HTTP, with faults) into a real label store; comparisons, provenance, resumption."""

from __future__ import annotations

import gzip
import json
import re
from itertools import combinations
from pathlib import Path

import openai
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from morlaif.store import open_store
from morlaif.store.models import Comparison, Job, Prompt, Response
from morlaif_cli.main import app as cli
from policy_trainer.data import PromptDataError, read_prompts
from policy_trainer.generate import SamplingConfig
from policy_trainer.sample import EndpointGenerator, LocalGenerator, choose_pairs, sample_to_store
from policy_trainer.train import load_trained_policy
from rigs.fake_openai import make_app, policy_texts

PROMPTS = [
    "\n\nHuman: How do I boil an egg?\n\nAssistant:",
    "\n\nHuman: hi\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant:",
    "\n\nHuman: Name a colour.\n\nAssistant:",
]


def prompt_file(tmp_path: Path) -> Path:
    """The three prompts as the three accepted forms: HH transcript (gzipped), chat messages, plain prompt."""
    f = tmp_path / "prompts.jsonl"
    lines = [
        {"chosen": PROMPTS[0] + " Boil it.", "rejected": PROMPTS[0] + " No."},
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "What is 2+2?"},
            ]
        },
        {"prompt": PROMPTS[2]},
    ]
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return f


def rows(store, model):
    with Session(store.engine) as s:
        return list(s.scalars(select(model)))


@pytest.fixture
def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path / 'labels.db'}")
    yield s
    s.close()


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir):
    return load_trained_policy(str(tiny_lm_dir), device="cpu")


def local(tiny, tiny_lm_dir, **kw) -> LocalGenerator:
    cfg = SamplingConfig(max_new_tokens=6, temperature=1.0, batch_size=16, seed=3, chat_template=False, **kw)
    return LocalGenerator(tiny[0], tiny[1], cfg, model_id=str(tiny_lm_dir))


def test_prompt_files_in_all_three_forms(tmp_path):
    assert read_prompts(prompt_file(tmp_path)) == PROMPTS
    gz = tmp_path / "hh.jsonl.gz"
    gz.write_bytes(
        gzip.compress((json.dumps({"chosen": PROMPTS[0] + " a", "rejected": PROMPTS[0] + " b"}) + "\n").encode())
    )
    assert read_prompts(gz) == [PROMPTS[0]]


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]}, "messages[0] must be"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "last message"),
        ({"text": "q"}, "expected a 'prompt' field, chat 'messages'"),
    ],
)
def test_bad_prompt_lines_name_file_and_line(tmp_path, line, words):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(PromptDataError, match=rf"bad\.jsonl:2: .*{re.escape(words)}"):
        read_prompts(f)


def test_choose_pairs_all_or_a_seeded_subset():
    assert choose_pairs(4, None, seed=0) == list(combinations(range(4), 2))
    some = choose_pairs(4, 3, seed=7)
    assert len(some) == 3 and len(set(some)) == 3 and set(some) <= set(combinations(range(4), 2))
    assert choose_pairs(4, 3, seed=7) == some and choose_pairs(4, 10, seed=1) == list(combinations(range(4), 2))


def test_local_sampling_writes_responses_comparisons_and_provenance(store, tiny, tiny_lm_dir):
    stats = sample_to_store(store, PROMPTS, local(tiny, tiny_lm_dir), k=3, source="sample:tiny", batch_prompts=2)
    responses = rows(store, Response)
    comparisons = rows(store, Comparison)
    assert stats.prompts == 3 and stats.skipped == 0
    assert stats.responses == len(responses) and stats.comparisons == len(comparisons)
    assert {p.text for p in rows(store, Prompt)} == set(PROMPTS)
    by_prompt: dict[str, list[Response]] = {}
    for r in responses:
        by_prompt.setdefault(r.prompt_id, []).append(r)
        assert r.source == "sample:tiny"
        assert r.meta["model"] == str(tiny_lm_dir) and r.meta["backend"] == "transformers"
        assert r.meta["temperature"] == 1.0 and r.meta["max_new_tokens"] == 6 and r.meta["k"] == 3
        assert r.meta["sample"] in (0, 1, 2)
    # all pairs of each prompt's distinct responses, nothing else
    want = sum(len(rs) * (len(rs) - 1) // 2 for rs in by_prompt.values())
    assert len(comparisons) == want and want >= 3  # temperature 1 on random weights: the answers differ
    for c in comparisons:
        assert c.source == "sample:tiny" and c.response_a_id < c.response_b_id
        assert {c.response_a_id, c.response_b_id} <= {r.id for r in by_prompt[c.prompt_id]}


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, tiny, tiny_lm_dir):
    whole = open_store(f"sqlite:///{tmp_path / 'whole.db'}")
    parts = open_store(f"sqlite:///{tmp_path / 'parts.db'}")
    try:
        sample_to_store(whole, PROMPTS, local(tiny, tiny_lm_dir), k=3, source="s", batch_prompts=1)

        class Crash(RuntimeError):
            pass

        gen = local(tiny, tiny_lm_dir)
        calls = []

        def crashing(prompts, k):
            calls.append(prompts)
            if len(calls) == 2:
                raise Crash("the model process died")
            return gen(prompts, k)

        crashing.meta = gen.meta  # type: ignore[attr-defined]
        with pytest.raises(Crash):
            sample_to_store(parts, PROMPTS, crashing, k=3, source="s", batch_prompts=1)
        assert {p.text for p in rows(parts, Prompt)} == {PROMPTS[0]}  # the first batch is kept
        again = sample_to_store(parts, PROMPTS, gen, k=3, source="s", batch_prompts=1)
        assert again.skipped == 1 and again.prompts == 2
        assert sample_to_store(parts, PROMPTS, gen, k=3, source="s").prompts == 0  # nothing left to do
        texts = lambda st: sorted((r.prompt_id, r.text) for r in rows(st, Response))  # noqa: E731
        ids = lambda st: sorted(c.id for c in rows(st, Comparison))  # noqa: E731
        assert texts(parts) == texts(whole) and ids(parts) == ids(whole)
        # another source samples the same prompts again
        assert sample_to_store(parts, PROMPTS, gen, k=2, source="other", limit=1).prompts == 1
    finally:
        whole.close()
        parts.close()


def test_a_stop_request_stores_the_batch_in_hand_and_a_rerun_goes_on(store, tiny, tiny_lm_dir):
    """Ctrl-C or SIGTERM (the CLI's StopRequest): the batch being generated is stored, then sampling stops."""
    gen = local(tiny, tiny_lm_dir)
    asked = []
    stats = sample_to_store(store, PROMPTS, gen, k=2, source="s", batch_prompts=1,
                            should_stop=lambda: asked.append(1) or True)  # fmt: skip
    assert stats.prompts == 1 and len(asked) == 1 and {p.text for p in rows(store, Prompt)} == {PROMPTS[0]}
    again = sample_to_store(store, PROMPTS, gen, k=2, source="s", batch_prompts=1)
    assert again.skipped == 1 and again.prompts == 2


def test_a_random_subset_of_pairs_per_prompt(store, tiny, tiny_lm_dir):
    sample_to_store(store, PROMPTS, local(tiny, tiny_lm_dir), k=4, source="s", pairs=2, seed=5)
    with Session(store.engine) as s:
        per_prompt = dict(s.execute(select(Comparison.prompt_id, func.count()).group_by(Comparison.prompt_id)).all())
    assert sorted(per_prompt.values()) == [2, 2, 2]


@pytest.fixture
def judge_server(live_server):
    app = make_app()
    return app, live_server(app).start(ready_path=None)


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_endpoint_sampling_through_faults(store, judge_server, api):
    app, srv = judge_server
    app.state.retry_after = "0.01"
    app.state.faults = ["429", "500", "429"]
    app.state.max_n = 2  # the server gives at most 2 of the 3 choices asked for: the rest is asked again
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="EMPTY", max_retries=5)
    cfg = SamplingConfig(max_new_tokens=16, temperature=0.9, seed=11)
    gen = EndpointGenerator(client, "target-sft", cfg, api=api, concurrency=2, base_url=srv.url + "/v1")
    stats = sample_to_store(store, PROMPTS, gen, k=3, source="vllm", batch_prompts=2)
    assert stats.prompts == 3 and stats.comparisons == 9
    responses = rows(store, Response)
    assert len(responses) == 9
    assert {r.meta["backend"] for r in responses} == {f"openai-{api}"}
    assert {r.meta["model"] for r in responses} == {"target-sft"} and responses[0].meta["endpoint"] == srv.url + "/v1"
    if api == "completions":  # the raw prompt reached the server, seeded per prompt
        from policy_trainer.sample import _seed

        first = policy_texts(PROMPTS[0], 2, _seed(11, PROMPTS[0]))
        assert set(first) <= {r.text for r in responses}


def test_cli_samples_resumes_and_feeds_enqueue(tmp_path, tiny_lm_dir):
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    prompts = prompt_file(tmp_path)
    runner = CliRunner()
    args = ["sample", str(prompts), "--model", str(tiny_lm_dir), "-k", "3", "--store", db, "--quiet"]
    args += ["--no-chat-template", "--max-new-tokens", "6", "--temperature", "1.0", "--source", "demo"]
    first = runner.invoke(cli, [*args, "--limit", "2"])
    assert first.exit_code == 0, first.output
    assert "sampled 2 prompts (0 done before) x 3" in first.output
    second = runner.invoke(cli, args)
    assert second.exit_code == 0, second.output
    assert "sampled 1 prompts (2 done before) x 3" in second.output
    store = open_store(db)
    try:
        n_comparisons = len(rows(store, Comparison))
        assert n_comparisons >= 3
        enq = runner.invoke(cli, ["feedback", "enqueue", "--source", "demo", "--principles", "helpfulness,harmlessness",
                                  "--judge", "local", "--store", db])  # fmt: skip
        assert enq.exit_code == 0, enq.output
        assert len(rows(store, Job)) == 2 * n_comparisons
    finally:
        store.close()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--pairs", "some"], "give `all` or a number"),
        (["--endpoint", "http://127.0.0.1:9/v1"], "--endpoint needs --endpoint-model"),
        (["--api", "rest"], "chat or completions"),
    ],
)
def test_cli_rejects_bad_options(tmp_path, extra, words):
    prompts = prompt_file(tmp_path)
    out = CliRunner().invoke(cli, ["sample", str(prompts), "--store", f"sqlite:///{tmp_path / 'l.db'}", *extra])
    assert out.exit_code == 2 and words in out.output


def test_cli_names_the_bad_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    out = CliRunner().invoke(cli, ["sample", str(f), "--store", f"sqlite:///{tmp_path / 'l.db'}"])
    assert out.exit_code == 2 and "p.jsonl:2: field 'prompt' must be a non-empty string" in out.output
