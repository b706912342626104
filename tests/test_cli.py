"""The `morlaif` command line as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from morlaif_cli.main import app
from pm_server.serving.api import create_app
from pm_server.serving.config import ServerSettings

runner = CliRunner()
KEY = "score-key-0123456789"


def test_help_is_actionable():
    out = subprocess.run([sys.executable, "-m", "morlaif", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "serve" in out.stdout and "score" in out.stdout
    for cmd, words in (
        ("serve", ["MORLAIF_API_KEY", "--insecure-dev", "--adapter-root"]),
        ("score", ["JSONL", "--scalarizer", "resume", "--scalarizer-file"]),
        ("pm", ["train", "eval", "split"]),
        ("pm train", ["--principle", "--pool", "--publish", "--layers", "resume"]),
        ("pm eval", ["--human", "--single", "--validation-only"]),
    ):
        r = runner.invoke(app, [*cmd.split(), "--help"])
        assert r.exit_code == 0
        for w in words:
            assert w in r.output, (cmd, w)


def test_serve_refuses_without_keys(monkeypatch):
    for k in ("MORLAIF_API_KEY", "MORLAIF_ADMIN_KEY", "MORLAIF_INSECURE_DEV"):
        monkeypatch.delenv(k, raising=False)
    r = runner.invoke(app, ["serve", "--port", "1"])
    assert r.exit_code == 2
    assert "MORLAIF_API_KEY" in r.output
    assert "MORLAIF_INSECURE_DEV=1" in r.output


def test_serve_rejects_a_bad_rules_file(tmp_path, monkeypatch):
    bad = tmp_path / "rules.json"
    bad.write_text('[{"name": "x", "kind": "regex", "pattern": "("}]')
    r = runner.invoke(app, ["serve", "--insecure-dev", "--rules-file", str(bad)])
    assert r.exit_code == 2 and str(bad) in r.output and "invalid regular expression" in r.output


@pytest.fixture
def pm(live_server, tiny_encoder_dir, tmp_path):
    settings = ServerSettings(
        base_model=str(tiny_encoder_dir),
        adapter_root=tmp_path / "none",
        api_key=KEY,
        admin_key="admin-key-0123456789",
    )
    return live_server(create_app(settings)).start()


def test_score_file_and_resume(pm, tmp_path, monkeypatch):
    monkeypatch.setenv("MORLAIF_API_KEY", KEY)
    src = tmp_path / "in.jsonl"
    rows = [{"id": f"r{i}", "prompt": f"question {i}", "response": "answer " * (i + 1), "extra": i} for i in range(7)]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out.jsonl"
    args = [
        "score",
        str(src),
        str(out),
        "--url",
        pm.url,
        "--scalarizer",
        "linear",
        "--weights",
        '{"brevity": 1, "no_refusal": 2}',
        "--batch-size",
        "3",
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["id"] for g in got] == [r["id"] for r in rows]
    for g in got:
        assert g["extra"] == int(g["id"][1:])  # input fields kept
        assert g["reward"] == pytest.approx(g["scores"]["brevity"] + 2 * g["scores"]["no_refusal"])
    # a run killed mid-write: the last line torn, two records missing
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:4]) + lines[4][:10])
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    again = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["id"] for g in again] == [r["id"] for r in rows]
    assert again == got
    r = runner.invoke(app, args)
    assert "scored 0 records (7 already" in r.output


def test_score_bad_file_names_the_line(pm, tmp_path, monkeypatch):
    monkeypatch.setenv("MORLAIF_API_KEY", KEY)
    src = tmp_path / "bad.jsonl"
    src.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "a", "response": \n')
    r = runner.invoke(app, ["score", str(src), str(tmp_path / "o.jsonl"), "--url", pm.url])
    assert r.exit_code == 2 and f"{src}:3: invalid JSON" in r.output  # named, and the good line 1 is scored
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 1
    src.write_text('{"prompt": "a"}\n')
    r = runner.invoke(app, ["score", str(src), str(tmp_path / "o2.jsonl"), "--url", pm.url])
    assert r.exit_code == 2 and f"{src}:1:" in r.output and "response" in r.output
    assert not (tmp_path / "o2.jsonl").exists() and (tmp_path / "o2.jsonl.rejected.jsonl").exists()


def test_score_server_errors_are_clear(pm, tmp_path, monkeypatch):
    monkeypatch.setenv("MORLAIF_API_KEY", KEY)
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "a", "response": "b"}\n')
    r = runner.invoke(app, ["score", str(src), str(tmp_path / "o.jsonl"), "--url", pm.url, "--principles", "nope"])
    assert r.exit_code == 1 and "unknown principle(s) nope" in r.output
    monkeypatch.setenv("MORLAIF_API_KEY", "wrong")
    r = runner.invoke(app, ["score", str(src), str(tmp_path / "o.jsonl"), "--url", pm.url])
    assert r.exit_code == 1 and "401" in r.output


def test_serve_names_a_missing_base(tmp_path):
    r = runner.invoke(app, ["serve", "--insecure-dev", "--base", str(tmp_path / "no-such-model")])
    assert r.exit_code == 2 and "cannot load base model" in r.output and "no-such-model" in r.output


def test_score_with_a_scalarizer_file(pm, tmp_path, monkeypatch):
    monkeypatch.setenv("MORLAIF_API_KEY", KEY)
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "a", "response": "b c d"}\n')
    spec = tmp_path / "weights.json"
    spec.write_text('{"name": "linear", "weights": {"brevity": 3, "no_refusal": 0.5}}')
    out = tmp_path / "o.jsonl"
    r = runner.invoke(app, ["score", str(src), str(out), "--url", pm.url, "--scalarizer-file", str(spec)])
    assert r.exit_code == 0, r.output
    got = json.loads(out.read_text())
    assert got["reward"] == pytest.approx(3 * got["scores"]["brevity"] + 0.5 * got["scores"]["no_refusal"])
    spec.write_text('{"name": "linear", "weights": {"brevity": "x"}}')
    r = runner.invoke(app, ["score", str(src), str(out), "--url", pm.url, "--scalarizer-file", str(spec)])
    assert r.exit_code == 2 and "weights.brevity" in r.output and str(spec) in r.output


def test_serve_rejects_a_bad_scalarizer_file(tmp_path):
    f = tmp_path / "weights.json"
    f.write_text('{"name": "nope", "weights": {"helpfulness": 1}}')
    r = runner.invoke(app, ["serve", "--insecure-dev", "--scalarizer-file", str(f)])
    assert r.exit_code == 2 and str(f) in r.output and "unknown scalarizer 'nope'" in r.output
    f.write_text('{"name": "linear", "weights": {"helpfulness": -1}')
    r = runner.invoke(app, ["serve", "--insecure-dev", "--scalarizer-file", str(f)])
    assert r.exit_code == 2 and str(f) in r.output
    r = runner.invoke(app, ["serve", "--insecure-dev", "--scalarizer-file", str(tmp_path / "missing.json")])
    assert r.exit_code == 2 and "missing.json" in r.output and "cannot read" in r.output


def test_serve_and_pm_eval_reject_an_unknown_dtype(tmp_path):
    r = runner.invoke(app, ["serve", "--insecure-dev", "--dtype", "float16"])
    assert r.exit_code == 2 and "dtype" in r.output and "bfloat16" in r.output
    r = runner.invoke(app, ["pm", "eval", "--adapter-root", str(tmp_path), "--dtype", "fp8"])
    assert r.exit_code == 2 and "--dtype 'fp8'" in r.output and "float32, bfloat16, auto" in r.output
