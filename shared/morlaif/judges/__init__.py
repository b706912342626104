"""Judges: which of two responses better meets a principle, as p(A better than B), asked in both orders.

Used by the feedback worker (labels) and by ``morlaif eval winrate`` (win rates). Modules:

* `remote`: `OpenAIJudge`, any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp, Ollama), reading the top
  logprobs of "A" and "B"; `combine` averages the two orders.
* `local`: `TransformersJudge`, an in-process model (the offline default, SmolLM2-135M-Instruct).
* `ratelimit`: `RateLimiter`, requests and tokens per minute as evenly spaced admissions.
"""
