"""A stand-in OpenAI chat completions server: a real HTTP app speaking the protocol, with faults.

Its "judge" prefers the option whose text contains "good" (logit +-2) and leans 0.5 towards whatever is
shown first, so averaging both orders has a bias to cancel. Faults are queued per request
(`app.state.faults`) or drawn at random (`app.state.storm`, a probability): 429 with Retry-After, 500,
slow answers past the client's timeout, answers that are neither A nor B, and answers without logprobs.

Anything that is not the judge's prompt is answered as a target model would (`policy_texts`): ``n`` answers
per request, seeded by the request's ``seed`` and prompt, at most `app.state.max_n` of them (a server without
``n`` support answers one); /v1/completions does the same for raw text prompts.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import random
import re
import time

from fastapi import FastAPI, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse

PREFERENCE_LOGIT = 2.0
FIRST_BIAS = 0.5
FAULTS = ("429", "500", "slow", "garbage", "nologprobs")


def logit_first(content: str) -> float:
    m = re.search(r"Option A:\n(.*)\n\nOption B:\n(.*)\n\nPlease respond", content, re.S)
    assert m, "not the judge prompt"
    a, b = m.group(1), m.group(2)
    pref = PREFERENCE_LOGIT if "good" in a else -PREFERENCE_LOGIT if "good" in b else 0.0
    return pref + FIRST_BIAS


_JUDGE_PROMPT = re.compile(r"Option A:\n(.*)\n\nOption B:\n(.*)\n\nPlease respond", re.S)


def policy_texts(prompt: str, n: int, seed: object) -> list[str]:
    """What the stand-in "target model" answers: n different texts, the same for the same (prompt, seed)."""
    rng = random.Random(f"{seed}\x00{prompt}")
    tail = prompt.strip().splitlines()[-1][-40:] if prompt.strip() else ""
    return [f"answer {rng.randrange(10**6)} to {tail!r}" for _ in range(n)]


def _usage(prompt: str, texts: list[str]) -> dict:
    done = sum(len(t) // 4 for t in texts)
    return {"prompt_tokens": len(prompt) // 4, "completion_tokens": done, "total_tokens": len(prompt) // 4 + done}


def policy_completion(body: dict, max_n: int) -> dict:
    prompt = "\n".join(str(m.get("content", "")) for m in body["messages"])
    texts = policy_texts(prompt, min(int(body.get("n") or 1), max_n), body.get("seed"))
    return {
        "id": "chatcmpl-fake-policy",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [
            {"index": j, "message": {"role": "assistant", "content": t}, "logprobs": None, "finish_reason": "stop"}
            for j, t in enumerate(texts)
        ],
        "usage": _usage(prompt, texts),
    }


def text_completion(body: dict, max_n: int) -> dict:
    prompt = str(body["prompt"])
    texts = policy_texts(prompt, min(int(body.get("n") or 1), max_n), body.get("seed"))
    return {
        "id": "cmpl-fake-policy",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [{"index": j, "text": t, "logprobs": None, "finish_reason": "stop"} for j, t in enumerate(texts)],
        "usage": _usage(prompt, texts),
    }


def completion(body: dict, fault: str | None = None) -> dict:
    """The stand-in judge's chat completion for a request body."""
    content = body["messages"][-1]["content"]
    p = 1.0 / (1.0 + math.exp(-logit_first(content)))
    text = "A" if p >= 0.5 else "B"
    top = [
        {"token": "A", "logprob": math.log(p), "bytes": None},
        {"token": "B", "logprob": math.log(1 - p), "bytes": None},
    ]
    if fault == "garbage":
        text, top = "Both", [{"token": "Both", "logprob": -0.1, "bytes": None}]
    logprobs = (
        None
        if fault == "nologprobs" or not body.get("logprobs")
        else {"content": [{"token": top[0]["token"], "logprob": top[0]["logprob"], "bytes": None, "top_logprobs": top}]}
    )
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": len(content) // 4, "completion_tokens": 1, "total_tokens": len(content) // 4 + 1},
    }


def make_app(*, slow_s: float = 2.0, delay_s: float = 0.0, seed: int = 0) -> FastAPI:
    app = FastAPI()
    app.state.faults = []
    app.state.storm = 0.0
    app.state.times = []
    app.state.keys = set()
    app.state.by_key = collections.Counter()  # requests per Authorization header
    app.state.retry_after = "0.05"
    app.state.max_n = 128  # choices per request at most (1: a server without `n`)
    rng = random.Random(seed)

    def http_fault(fault: str) -> JSONResponse:
        if fault == "429":
            return JSONResponse(
                {"error": {"message": "slow down", "type": "rate_limit"}},
                status_code=429,
                headers={"retry-after": app.state.retry_after},
            )
        return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, status_code=500)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        app.state.times.append(time.monotonic())
        app.state.keys.add(request.headers.get("authorization", ""))
        app.state.by_key[request.headers.get("authorization", "")] += 1
        fault = app.state.faults.pop(0) if app.state.faults else None
        if fault is None and app.state.storm and rng.random() < app.state.storm:
            fault = rng.choice(FAULTS)
        if fault in ("429", "500"):
            return http_fault(fault)
        if fault == "401":  # a careless gateway that echoes the key it refused
            key = request.headers.get("authorization", "").removeprefix("Bearer ")
            msg = f"Incorrect API key provided: {key}"
            return JSONResponse({"error": {"message": msg, "type": "invalid_request_error"}}, status_code=401)
        if fault == "slow":
            await asyncio.sleep(slow_s)
        if delay_s:
            await asyncio.sleep(delay_s)
        if not _JUDGE_PROMPT.search(str(body["messages"][-1].get("content", ""))):
            return JSONResponse(policy_completion(body, app.state.max_n))
        return JSONResponse(completion(body, fault))

    @app.post("/v1/completions")
    async def completions(request: Request) -> JSONResponse:
        body = await request.json()
        app.state.times.append(time.monotonic())
        fault = app.state.faults.pop(0) if app.state.faults else None
        if fault in ("429", "500"):
            return http_fault(fault)
        return JSONResponse(text_completion(body, app.state.max_n))

    # -- the Batch API: files and batches; a batch is "in_progress" on its first retrieve, then done
    app.state.files = {}
    app.state.batches = {}
    app.state.batch_faults = {}  # custom_id -> fault for that line

    @app.post("/v1/files")
    async def upload(file: UploadFile, purpose: str = Form(...)) -> dict:
        fid = f"file-{len(app.state.files) + 1}"
        app.state.files[fid] = (await file.read()).decode()
        return {
            "id": fid,
            "object": "file",
            "bytes": len(app.state.files[fid]),
            "created_at": int(time.time()),
            "filename": file.filename,
            "purpose": purpose,
        }

    @app.get("/v1/files/{fid}/content")
    async def file_content(fid: str) -> PlainTextResponse:
        return PlainTextResponse(app.state.files[fid])

    def batch_obj(bid: str) -> dict:
        return app.state.batches[bid]

    @app.post("/v1/batches")
    async def create_batch(request: Request) -> dict:
        body = await request.json()
        bid = f"batch-{len(app.state.batches) + 1}"
        app.state.batches[bid] = {
            "id": bid,
            "object": "batch",
            "endpoint": body["endpoint"],
            "errors": None,
            "input_file_id": body["input_file_id"],
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(time.time()),
            "metadata": body.get("metadata"),
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
        }
        return batch_obj(bid)

    @app.get("/v1/batches/{bid}")
    async def get_batch(bid: str) -> dict:
        b = app.state.batches[bid]
        if b["status"] == "validating":
            b["status"] = "in_progress"
        elif b["status"] == "in_progress":
            out = []
            for line in app.state.files[b["input_file_id"]].splitlines():
                req = json.loads(line)
                fault = app.state.batch_faults.get(req["custom_id"])
                status = 500 if fault == "500" else 200
                out.append(
                    {
                        "id": f"req-{req['custom_id']}",
                        "custom_id": req["custom_id"],
                        "error": None,
                        "response": {
                            "status_code": status,
                            "request_id": "r",
                            "body": completion(req["body"], fault) if status == 200 else {},
                        },
                    }
                )
            fid = f"file-{len(app.state.files) + 1}"
            app.state.files[fid] = "".join(json.dumps(x) + "\n" for x in out)
            b.update(status="completed", output_file_id=fid)
        return b

    return app
