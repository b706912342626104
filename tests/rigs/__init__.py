"""Test stand-ins, used by the tests, benchmarks and scripts and shipped in no product package.

Modules:

* `fake_openai`: a stand-in OpenAI chat completions server (a real HTTP app), with faults on demand.
* `tiny_lm`: a tiny random causal LM over a 16-word vocabulary (milliseconds a step on a CPU).
* `pm_packages`: tiny bases and random adapter packages.
* `loadgen`: a bounded load generator for the PM server (N concurrent clients for a fixed time).
* `netlab`: several network hosts on one Linux machine (network namespaces on a bridge).
* `cli_args`: command lines and environment variables checked against the real `morlaif` CLI.
"""
