"""`morlaif up` as a user runs it: a real process tree, the printed curl example, Ctrl-C, a taken port."""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from morlaif.store import PairRecord, open_store
from rigs.fake_openai import make_app

UP = [sys.executable, "-m", "morlaif", "up"]


class Lines:
    """Collects a process's stdout lines in a thread, so the test can wait for one without blocking."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, proc: subprocess.Popen[str], timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if text in line:
                    return line
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        pytest.fail(f"no line with {text!r}; output:\n" + "\n".join(self.lines[-60:]))

    def stop(self, proc: subprocess.Popen[str]) -> None:
        """Ctrl-C (SIGINT), as a user stops `morlaif up`; killed if it has not exited in 60 s."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.thread.join(5)
        assert proc.stdout is not None
        proc.stdout.close()


def test_up_serves_prints_a_working_curl_example_runs_a_worker_and_stops_on_ctrl_c(
    tiny_encoder_dir, live_server, tmp_path, unused_port
):
    judge = live_server(make_app()).start(ready_path=None)
    store = f"sqlite:///{tmp_path / 'labels.db'}"
    with open_store(store) as s:
        s.import_pairs(
            [
                PairRecord(prompt=f"q{i}", chosen=f"good {i}", rejected=f"poor {i}", principle="helpfulness")
                for i in range(3)
            ]
        )
        jobs = s.enqueue(["helpfulness"], "fake-judge")
    port = unused_port
    cmd = [*UP, "--port", str(port), "--base", str(tiny_encoder_dir), "--adapter-root", str(tmp_path / "none"),
           "--feedback", "--judge", "fake-judge", "--judge-base-url", judge.url + "/v1", "--store", store]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    out = Lines(proc)
    try:
        out.wait_for("morlaif is up", proc)
        principles = out.wait_for("|   principles", proc)
        assert "brevity" in principles and "no_refusal" in principles
        curl = out.wait_for("|     curl -s", proc).split("| ", 1)[1].strip()
        assert curl.startswith("curl -s http://127.0.0.1:")
        if shutil.which("curl"):
            res = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=30)
            body = json.loads(res.stdout)
        else:  # the same request, sent as the printed command says
            import httpx

            argv = shlex.split(curl)
            body = httpx.post(
                argv[2], content=argv[argv.index("-d") + 1], headers={"content-type": "application/json"}
            ).json()
        assert set(body["principles"]) == {"brevity", "no_refusal"} and len(body["results"]) == 1
        assert any(line.startswith("pm_server ") and "POST /v1/score" in line for line in out.lines)
        # the worker labels the queued jobs
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with open_store(store) as s:
                if len(list(s.labels("helpfulness", judge="fake-judge"))) == jobs:
                    break
            time.sleep(0.3)
        else:
            pytest.fail("the worker did not label the jobs:\n" + "\n".join(out.lines[-40:]))
    finally:
        out.stop(proc)
    assert proc.returncode == 0, "\n".join(out.lines[-40:])
    assert any("stopped: pm_server (ok), feedback_worker (ok)" in line for line in out.lines)
    assert any(line.startswith("feedback_worker") and "labels written: 3" in line for line in out.lines)
    with socket.socket() as s:  # the server is gone: its port is free again
        s.bind(("127.0.0.1", port))


def test_up_refuses_a_taken_port_and_a_public_address_without_keys(tmp_path, monkeypatch):
    monkeypatch.delenv("MORLAIF_API_KEY", raising=False)
    monkeypatch.delenv("MORLAIF_ADMIN_KEY", raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = subprocess.run([*UP, "--port", str(port)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 2 and f"127.0.0.1:{port} is already in use" in res.stderr
    res = subprocess.run([*UP, "--host", "0.0.0.0"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 2 and "set MORLAIF_API_KEY and MORLAIF_ADMIN_KEY" in res.stderr
    assert not Path(tmp_path / "var").exists()


def test_up_reads_the_keys_from_dot_env_as_the_server_does(tiny_encoder_dir, tmp_path, unused_port, monkeypatch):
    """Found by a fresh-clone check: with the keys only in ./.env (as docker compose wants them), the server
    required them but `up` printed a keyless curl (401) and could not list the principles."""
    import os

    import httpx

    monkeypatch.delenv("MORLAIF_API_KEY", raising=False)
    monkeypatch.delenv("MORLAIF_ADMIN_KEY", raising=False)
    key = "dot-env-api-key-0123456789abcdef"
    (tmp_path / ".env").write_text(f"MORLAIF_API_KEY={key}\nMORLAIF_ADMIN_KEY=dot-env-admin-key-0123456789ab\n")
    cmd = [*UP, "--port", str(unused_port), "--base", str(tiny_encoder_dir), "--adapter-root", str(tmp_path / "a")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MORLAIF_") or k == "MORLAIF_DTYPE"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env)
    out = Lines(proc)
    try:
        out.wait_for("morlaif is up", proc)
        assert "brevity" in out.wait_for("|   principles", proc)  # its own call carried the key
        curl = out.wait_for("|     curl -s", proc)
        assert 'Authorization: Bearer $MORLAIF_API_KEY"' in curl
        assert "set -a; . ./.env; set +a" in out.wait_for("the key is in ./.env", proc)
        url = f"http://127.0.0.1:{unused_port}/v1/score"
        body = {"items": [{"prompt": "q", "response": "a"}]}
        assert httpx.post(url, json=body, timeout=30).status_code == 401
        assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code == 200
    finally:
        out.stop(proc)
    assert proc.returncode == 0 and any("stopped: pm_server (ok)" in line for line in out.lines), out.lines[-20:]
