"""Principle-scores per second: our mixed-adapter batches against MORLAIF's sequential hot-swapper.

Both run on the same base model in the same process, on the same items of exactly `--tokens` tokens:

* ours: every (item, principle) row goes through the batcher's model thread as mixed-adapter
  micro-batches, as the PM server does; with `--adapter-layers upper-third` the layers below the adapters
  run once per item (the shared trunk), and the last layer is computed only at the position the score
  head reads (the read-out); the same engine with the trunk alone, and with neither, is timed beside it;
* MORLAIF's `PreferenceModelHotswapper.compute_scores`: for each principle, `set_adapter(p)` then one
  forward of the whole batch;
* PEFT's own mixed-adapter batch (`adapter_names=` per row), through the same batcher;
* a bare forward of the base model (no adapters) over the same rows, in micro-batches of the same token
  budget: what the hardware gives for that many rows, the reference for the others;
* with `--bf16`, our engine (all savings) and the sequential loop again on the base in bfloat16
  (`morlaif serve --dtype bfloat16`): about 1.8x on a CPU with AVX512-BF16; their scores are compared with
  float32's (`bf16_max_abs_diff`, and as a share of the scores' spread).

The two must agree on every score (checked) before their times mean anything. Prints a table and writes
JSON (and nothing else: no timed assertions).

    python benchmarks/score_throughput.py                       # MiniLM-L6, 1/4/12 principles, 128 tokens
    python benchmarks/score_throughput.py --base path/to/model --items 32
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import _rigs_path  # noqa: F401  (tests/ on sys.path: the rigs)
import torch
from peft import PeftModel

from morlaif.principles import DEFAULT_CONSTITUTION
from pm_server.model.base import load_base
from pm_server.model.engine import Row, ScoringEngine
from pm_server.model.template import InputTemplate, TemplateEncoder
from pm_server.serving.batcher import Batcher
from rigs.pm_packages import make_random_package

WORDS = [
    "the",
    "model",
    "answers",
    "questions",
    "about",
    "science",
    "history",
    "cooking",
    "travel",
    "and",
    "code",
    "with",
    "care",
    "while",
    "avoiding",
    "harm",
    "and",
    "flattery",
]


def make_items(
    n: int, seed: int, tokens: int, group: int = 1, count: Callable[[str], int] | None = None
) -> list[tuple[str, str]]:
    """`n` (prompt, response) items, `group` responses per prompt; the response about a quarter of `tokens`,
    the prompt (cut from the left by the template) the rest. With `count` (a tokenizer's token count) every
    response is exactly `tokens // 4` tokens, so the template cuts a group's prompt alike and its responses
    share the prompt's tokens, as a group's responses do when the prompt fits."""
    g = torch.Generator().manual_seed(seed)
    want = max(1, tokens // 4)

    def text(k: int) -> str:
        return " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (k,), generator=g))

    def response() -> str:
        while True:
            r = text(want)
            if count is None:
                return r
            extra = count(r) - want
            if extra > 0:  # the words are one token each, mostly: drop as many words as tokens too many
                r = " ".join(r.split()[: want - extra])
            if count(r) == want:
                return r

    items = []
    while len(items) < n:
        prompt = text(2 * tokens)
        items += [(prompt, response()) for _ in range(min(group, n - len(items)))]
    return items


def _copy_base(base):
    """A private copy of the base: PEFT injects adapters into the model it wraps."""
    import dataclasses

    return dataclasses.replace(base, model=copy.deepcopy(base.model))


def ours(batcher: Batcher, rows: list[Row]) -> list[float]:
    return batcher.submit(rows).result()


def hotswapper(
    model: PeftModel, names: list[str], ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None
) -> dict[str, list[float]]:
    """MORLAIF's compute_scores: set_adapter(p), then one forward of the batch, for each principle."""
    scores = {}
    kw = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        kw["token_type_ids"] = types
    for name in names:
        model.set_adapter(name)
        model.eval()
        with torch.no_grad():
            scores[name] = model(**kw).logits[:, 0].tolist()
    return scores


def started_batcher(engine: ScoringEngine, max_batch_tokens: int, n_rows: int) -> Batcher:
    """A running batcher that takes a whole scoring call at once and cuts it by the token budget alone."""
    b = Batcher(
        engine, max_batch_tokens=max_batch_tokens, max_batch_rows=256, max_wait_s=0.0, max_queued_rows=n_rows + 1
    )
    b.start()
    return b


def timed(fns, repeats: int) -> list[tuple[float, object]]:
    """Median time and last output of each function, run in turn so that drift in the machine's speed
    hits all alike."""
    outs = [f() for f in fns]  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            outs[i] = f()
            times[i].append(time.perf_counter() - t0)
    return [(statistics.median(t), o) for t, o in zip(times, outs, strict=True)]


def adapter_layers(n_layers: int, which: str) -> list[int] | None:
    """The layers the random adapters touch: all (None) or the upper third."""
    if which == "all":
        return None
    return list(range(n_layers - max(1, n_layers // 3), n_layers))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="minilm", help="base model (default: the embedded MiniLM-L6)")
    ap.add_argument("--principles", default="1,4,12", help="comma-separated principle counts")
    ap.add_argument("--items", type=int, default=16, help="items per scoring call")
    ap.add_argument(
        "--group",
        type=int,
        default=1,
        help="responses per prompt (a PPO/GRPO group): decoders then compute each prompt once",
    )
    ap.add_argument("--tokens", default="128", help="comma-separated tokens per item (exact), e.g. 64,256")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats after one warm-up (median)")
    ap.add_argument(
        "--max-batch-tokens",
        type=int,
        default=4096,
        help="our micro-batch token budget (a CPU runs 32 x 128-token rows as fast per row as more)",
    )
    ap.add_argument(
        "--adapter-layers",
        choices=["all", "upper-third"],
        default="all",
        help="layers the random adapters touch; upper-third lets the engine share the trunk",
    )
    ap.add_argument(
        "--bf16",
        action="store_true",
        help="also time our engine and the sequential loop with the base in bfloat16 (`serve --dtype bfloat16`)",
    )
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/score_throughput.json"))
    args = ap.parse_args()
    counts = [int(x) for x in args.principles.split(",")]
    names_all = [p.name for p in DEFAULT_CONSTITUTION]
    if max(counts) > len(names_all):
        ap.error(f"at most {len(names_all)} principles")

    base = load_base(args.base, device=args.device)
    base16 = load_base(args.base, device=args.device, dtype="bfloat16") if args.bf16 else None
    dev = base.device
    results = []
    for tokens in [int(x) for x in args.tokens.split(",")]:
        results += run_config(args, base, base16, dev, tokens, counts, names_all)
    report(args, dev, results)


def bare_forward(model, ids: torch.Tensor, types: torch.Tensor | None, k: int, chunk: int) -> list[float]:
    """The base alone over the same rows (each item k times), in micro-batches of `chunk` rows."""
    rows_ids = ids.repeat_interleave(k, 0)
    rows_types = types.repeat_interleave(k, 0) if types is not None else None
    out: list[float] = []
    with torch.inference_mode():
        for i in range(0, rows_ids.shape[0], chunk):
            kw = {"input_ids": rows_ids[i : i + chunk], "attention_mask": torch.ones_like(rows_ids[i : i + chunk])}
            if rows_types is not None:
                kw["token_type_ids"] = rows_types[i : i + chunk]
            out += model(**kw).logits[:, 0].tolist()
    return out


#: our engine's variants, timed side by side: (key, label, ScoringEngine options)
VARIANTS = [
    ("ours", "ours (all savings)", {}),
    ("ours_no_prefix", "ours, no prompt sharing", {"share_prefix": False}),
    ("ours_trunk_only", "ours, shared trunk only", {"readout": False, "share_prefix": False}),
    ("ours_unshared", "ours, none of them", {"share_trunk": False, "readout": False, "share_prefix": False}),
    ("peft_mixed", "PEFT mixed batch", {"grouped": False}),
]


def run_config(args, base, base16, dev, tokens: int, counts: list[int], names_all: list[str]) -> list[dict]:
    template = InputTemplate(kind=base.default_template.kind, text=base.default_template.text, max_length=tokens)
    enc = TemplateEncoder(base.tokenizer, template)
    encoded = [
        enc.encode(p, r)
        for p, r in make_items(args.items, seed=0, tokens=tokens, group=args.group, count=enc.count_tokens)
    ]
    assert all(len(e) == tokens for e in encoded), "items must be exactly --tokens long"
    ids = torch.tensor([e.input_ids for e in encoded], device=dev)
    mask = torch.ones_like(ids)
    types = None
    if encoded[0].token_type_ids is not None:
        types = torch.tensor([e.token_type_ids for e in encoded], device=dev)
    # prompt sharing only changes anything for decoders with several responses per prompt
    variants = [v for v in VARIANTS if v[0] != "ours_no_prefix" or (args.group > 1 and base.family == "decoder")]

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        layers = adapter_layers(base.model.config.num_hidden_layers, args.adapter_layers)
        for i, n in enumerate(names_all[: max(counts)]):
            make_random_package(root, base, n, "v1", seed=i, scale=0.05, layers_to_transform=layers)
        for k in counts:
            names = names_all[:k]
            engines = {key: ScoringEngine(_copy_base(base), **opts) for key, _, opts in variants}
            if base16 is not None:
                engines["ours_bf16"] = ScoringEngine(_copy_base(base16))
            for j, n in enumerate(names):  # internal ids, as the server uses ("bias" is no safe module name)
                for e in engines.values():
                    e.load_adapter(root / n / "v1", f"pm{j}")
            bare = copy.deepcopy(base.model)
            rows = [
                Row(e.input_ids, e.token_type_ids, f"pm{j}", e.prefix_tokens)
                for e in encoded
                for j in range(len(names))
            ]
            swaps = [swapper(base, root, names)] + ([swapper(base16, root, names)] if base16 is not None else [])
            ids_ = [f"pm{j}" for j in range(len(names))]
            # one long-lived model thread each, as in the server (a new thread per call pays for a new OpenMP team)
            batchers = {key: started_batcher(e, args.max_batch_tokens, len(rows)) for key, e in engines.items()}
            chunk = max(1, args.max_batch_tokens // tokens)
            fns = [lambda b=b, r=rows: ours(b, r) for b in batchers.values()]
            fns += [lambda m=m, n=ids_: hotswapper(m, n, ids, mask, types) for m in swaps]
            fns += [lambda m=bare, kk=k, c=chunk: bare_forward(m, ids, types, kk, c)]
            timings = timed(fns, args.repeats)
            for b in batchers.values():
                b.stop()
            (t_swap, ref_), (t_bare, _) = timings[len(batchers)], timings[-1]
            times = {key: t for key, (t, _) in zip(batchers, timings, strict=False)}
            outs = {key: o for key, (_, o) in zip(batchers, timings, strict=False)}
            got = outs["ours"]
            flat_ref = [ref_[f"pm{j}"][i] for i in range(len(encoded)) for j in range(k)]  # item-major, as ours
            max_diff = max(abs(a - b) for a, b in zip(got, flat_ref, strict=True))
            for key, other in outs.items():
                if key != "ours_bf16":
                    max_diff = max(max_diff, max(abs(a - b) for a, b in zip(got, other, strict=True)))
            if max_diff > 1e-4:
                raise SystemExit(f"scores differ by {max_diff:.2e} at {k} principles: not comparable")
            bf16 = {}
            if base16 is not None:
                t_swap16, ref16 = timings[len(batchers) + 1]
                flat16 = [ref16[f"pm{j}"][i] for i in range(len(encoded)) for j in range(k)]
                spread = max(flat_ref) - min(flat_ref)
                diff16 = max(abs(a - b) for a, b in zip([*outs["ours_bf16"], *flat16], flat_ref * 2, strict=True))
                bf16 = {
                    "hotswap_bf16_scores_per_s": len(encoded) * k / t_swap16,
                    "hotswap_bf16_s": t_swap16,
                    "speedup_bf16": t_swap / times["ours_bf16"],
                    "speedup_bf16_vs_bf16": t_swap16 / times["ours_bf16"],
                    "bf16_max_abs_diff": diff16,
                    "bf16_max_diff_over_spread": diff16 / spread if spread > 0 else None,
                }
            n_scores = len(encoded) * k
            r = {
                "base": args.base,
                "principles": k,
                "items": len(encoded),
                "responses_per_prompt": args.group,
                "tokens_per_item": tokens,
                "adapter_layers": args.adapter_layers,
                "trunk_layers": engines["ours"].last_trunk_layers,
                "readout": engines["ours"].readout_kind,
                "bare_base_rows_per_s": n_scores / t_bare,
                "hotswap_scores_per_s": n_scores / t_swap,
                "hotswap_s": t_swap,
                "speedup": t_swap / times["ours"],
                "max_abs_diff": max_diff,
                **bf16,
            }
            for key, t in times.items():
                r[f"{key}_scores_per_s"] = n_scores / t
                r[f"{key}_s"] = t
            results.append(r)
    return results


def swapper(base, root: Path, names: list[str]) -> PeftModel:
    """MORLAIF's hot-swapper: a private copy of the base with every principle's adapter loaded."""
    swap = PeftModel.from_pretrained(copy.deepcopy(base.model), str(root / names[0] / "v1"), adapter_name="pm0")
    for j, n in enumerate(names[1:], start=1):
        swap.load_adapter(str(root / n / "v1"), adapter_name=f"pm{j}", is_trainable=False)
    return swap


def report(args, dev, results: list[dict]) -> None:
    """Print the table, write the JSON and a PNG of scores per second by method."""
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu {platform.machine()}"
    print(
        f"base={args.base} adapters on {args.adapter_layers} layers, torch={torch.__version__} "
        f"threads={torch.get_num_threads()} device={where}  (principle-scores per second)"
    )
    keys = [key for key, _, _ in VARIANTS if f"{key}_scores_per_s" in results[0]]
    short = {"ours": "ours", "ours_no_prefix": "no prompt", "ours_trunk_only": "trunk only",
             "ours_unshared": "none", "peft_mixed": "peft-mixed"}  # fmt: skip
    bf16 = "ours_bf16_scores_per_s" in results[0]
    head = f"{'principles':>10} {'tokens':>6} {'trunk':>5} " + " ".join(f"{short[k]:>10}" for k in keys)
    head += f" {'sequential':>10} {'bare base':>9} {'vs seq':>7}"
    if bf16:
        head += f" {'ours bf16':>10} {'seq bf16':>9} {'vs seq':>7} {'bf16 diff':>9}"
    print(head)
    for r in results:
        cols = " ".join(f"{r[f'{k}_scores_per_s']:>10.1f}" for k in keys)
        line = (
            f"{r['principles']:>10} {r['tokens_per_item']:>6} {r['trunk_layers']:>5} {cols} "
            f"{r['hotswap_scores_per_s']:>10.1f} {r['bare_base_rows_per_s']:>9.1f} {r['speedup']:>6.2f}x"
        )
        if bf16:  # vs the float32 loop; the diff as a share of the float32 scores' spread
            line += (
                f" {r['ours_bf16_scores_per_s']:>10.1f} {r['hotswap_bf16_scores_per_s']:>9.1f}"
                f" {r['speedup_bf16']:>6.2f}x {r['bf16_max_diff_over_spread'] or 0:>8.1%}"
            )
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "base": args.base,
        "adapter_layers": args.adapter_layers,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": where,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "repeats": args.repeats,
        "responses_per_prompt": args.group,
        "bf16": args.bf16,
    }
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    png = args.out.with_suffix(".png")
    plot(results, png, f"{args.base}, adapters on {args.adapter_layers} layers, {where}")
    print(f"wrote {args.out} and {png}")


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [(f"{key}_scores_per_s", label) for key, label, _ in VARIANTS if f"{key}_scores_per_s" in results[0]]
    methods += [
        ("hotswap_scores_per_s", "sequential set_adapter"),
        ("bare_base_rows_per_s", "bare base forward"),
    ]
    if "ours_bf16_scores_per_s" in results[0]:
        methods += [("ours_bf16_scores_per_s", "ours, bfloat16"), ("hotswap_bf16_scores_per_s", "sequential, bfloat16")]
    labels = [f"{r['principles']}p x {r['tokens_per_item']}t" for r in results]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(results)), 4))
    width = 0.8 / len(methods)
    for i, (key, name) in enumerate(methods):
        ax.bar([x + i * width for x in range(len(results))], [r[key] for r in results], width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(results))], labels)
    ax.set_ylabel("principle-scores per second")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
