"""`morlaif feedback` commands over a real SQLite store."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from morlaif_cli.main import app

runner = CliRunner()


def test_import_enqueue_status_export(tmp_path):
    store = f"sqlite:///{tmp_path / 'labels.db'}"
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}", "principle": "helpfulness"})
            + "\n"
            for i in range(6)
        )
    )
    r = runner.invoke(app, ["feedback", "import", str(pairs), "--store", store])
    assert r.exit_code == 0, r.output
    assert "6 records; new: 6 prompts, 12 responses, 6 comparisons, 6 human labels" in r.output
    r = runner.invoke(app, ["feedback", "import", str(pairs), "--store", store])
    assert "new: 0 prompts, 0 responses, 0 comparisons, 0 human labels" in r.output
    r = runner.invoke(
        app,
        [
            "feedback",
            "enqueue",
            "--principles",
            "helpfulness,toxicity",
            "--judge",
            "j",
            "--limit",
            "4",
            "--store",
            store,
        ],
    )
    assert r.exit_code == 0 and "enqueued 8 jobs" in r.output
    r = runner.invoke(app, ["feedback", "status", "--store", store])
    lines = {ln.split()[0]: ln.split()[1:] for ln in r.output.splitlines()[1:]}
    assert lines["helpfulness"] == ["4", "0", "0", "0"] and lines["toxicity"] == ["4", "0", "0", "0"]
    out = tmp_path / "h.jsonl"
    r = runner.invoke(app, ["feedback", "export", "--principle", "helpfulness", "--out", str(out), "--store", store])
    assert r.exit_code == 0 and "wrote 6 pairs" in r.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(r["chosen"].startswith("good") and r["p"] == 1.0 for r in rows)


def test_clear_errors(tmp_path):
    store = f"sqlite:///{tmp_path / 'labels.db'}"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b", "principle": "x"}\nnot json\n')
    r = runner.invoke(app, ["feedback", "import", str(bad), "--store", store])
    assert r.exit_code == 2 and f"{bad}:2: invalid JSON" in r.output
    r = runner.invoke(app, ["feedback", "enqueue", "--principles", "Bad Name", "--judge", "j", "--store", store])
    assert r.exit_code == 2 and "Bad Name" in r.output
    r = runner.invoke(app, ["feedback", "status", "--store", "postgresql+psycopg://bob:hunter2@127.0.0.1:1/x"])
    assert r.exit_code == 2 and "cannot open the label store" in r.output
    assert "hunter2" not in r.output and "***" in r.output


def test_import_hub_without_datasets_says_what_to_install(tmp_path):
    import importlib.util

    import pytest

    if importlib.util.find_spec("datasets") is not None:
        pytest.skip("datasets is installed here; this checks the message when it is not")
    r = runner.invoke(
        app,
        [
            "feedback",
            "import-hub",
            "Anthropic/hh-rlhf",
            "--principle",
            "harmlessness",
            "--store",
            f"sqlite:///{tmp_path / 'l.db'}",
        ],
    )
    assert r.exit_code == 2 and "pip install 'morlaif[hub]'" in r.output
