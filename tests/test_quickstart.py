"""The README's quick start, as printed: `make up`'s command on the default adapters, then its curl example."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_make_up_then_the_readme_curl_example(monkeypatch, unused_port):
    if shutil.which("make") is None or shutil.which("curl") is None:
        pytest.skip("needs make and curl, as the README does")
    monkeypatch.delenv("MORLAIF_API_KEY", raising=False)
    monkeypatch.delenv("MORLAIF_ADMIN_KEY", raising=False)
    port = unused_port
    # the command `make up` runs (dry run: the install step is the suite's own)
    dry = subprocess.run(["make", "-n", "up", f"PORT={port}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    up_line = [x for x in dry.stdout.splitlines() if " up " in x and "morlaif" in x][-1]
    argv = shlex.split(up_line)
    assert argv[0].endswith("bin/morlaif") and argv[1:] == ["up", "--adapter-root", "adapters", "--port", str(port)]
    argv[0] = str(Path(sys.executable).parent / "morlaif")
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"Once it prints `morlaif is up`.*?```bash\n(.*?)```", readme, re.S)
    assert block, "the README's quick start curl example is gone"
    curl = block.group(1).replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    up = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "morlaif is up" in line:
                up.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert up.wait(180), "".join(lines[-40:])  # as a user would: wait for it to say so
        res = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        reader.join(10)
        assert proc.stdout is not None
        proc.stdout.close()
    out = "".join(lines)
    body = json.loads(res.stdout)
    assert set(body["principles"]) == {"helpfulness", "harmlessness", "no_refusal"}  # the weighted ones
    answer, refusal = body["results"]
    assert refusal["raw_scores"]["no_refusal"] == 0.0 and answer["raw_scores"]["no_refusal"] == 1.0
    committed = max(d.name for d in (ROOT / "adapters" / "helpfulness").iterdir())  # the newest version is served
    assert all(r["reward"] is not None for r in body["results"]) and body["versions"]["helpfulness"] == committed
    assert proc.returncode == 0 and "morlaif is up" in out and "stopped: pm_server (ok)" in out
