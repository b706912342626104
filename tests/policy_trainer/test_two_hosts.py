"""The trainer and the PM server on two network hosts (network namespaces joined by veth links)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rigs.netlab import wait_http_ok
from rigs.tiny_lm import word_prompts

BIN = Path(sys.executable).parent
API_KEY = "two-hosts-scoring-key-0123456789"
ADMIN_KEY = "two-hosts-admin-key-0123456789ab"


def test_ppo_run_over_a_link_between_two_hosts(netlab, tiny_encoder_dir, tiny_lm_dir, tmp_path):
    server, trainer = netlab.add_host("pm"), netlab.add_host("ppo")
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"name": "says_good", "kind": "regex", "pattern": r"\bgood\b"}]))
    log = tmp_path / "server.log"
    proc = server.popen(
        [str(BIN / "morlaif"), "serve", "--base", str(tiny_encoder_dir), "--adapter-root", str(tmp_path / "none"),
         "--rules-file", str(rules), "--host", server.ip, "--port", "8000"],
        env={"MORLAIF_API_KEY": API_KEY, "MORLAIF_ADMIN_KEY": ADMIN_KEY},
        log=log,
    )  # fmt: skip
    url = f"http://{server.ip}:8000"
    why = wait_http_ok(url + "/readyz", proc)  # from the root namespace, over the bridge
    assert why is None, f"the PM server is not ready: {why}\n{log.read_text()[-3000:]}"

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in word_prompts(12)))
    run = tmp_path / "run"
    res = trainer.run(
        [str(BIN / "morlaif"), "ppo", "train", "--url", url, "--model", str(tiny_lm_dir), "--prompts", str(prompts),
         "--steps", "3", "--out", str(run), "--quiet", "--set", "ppo.batch_size=4", "--set", "ppo.mini_batch_size=2",
         "--set", "generation.max_new_tokens=4", "--set", "model.lora=false", "--set", "data.eval_fraction=0"],
        env={"MORLAIF_API_KEY": API_KEY},
        timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(0.0 <= r["score/says_good"] <= 1.0 and r["reward_wait_seconds"] > 0 for r in rows)
    # the requests came from the trainer's host, over the link, with its key
    access = [line for line in log.read_text().splitlines() if "POST /v1/score" in line]
    assert len(access) >= 3 and all(trainer.ip in line and " 200" in line for line in access)

    # the trainer's host has no route to anything on the server's loopback: it could only use the link
    local = trainer.run([sys.executable, "-c", "import httpx; httpx.get('http://127.0.0.1:8000/healthz')"])
    assert local.returncode != 0 and "ConnectError" in local.stderr
