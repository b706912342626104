"""Preference pairs for PM training and evaluation: read from files or the label store, split by prompt.

A data spec names a file, optionally with the principle its pairs are for: ``path`` or ``principle=path``.

* Pair JSONL (``../shared/data/*.jsonl``, ``morlaif feedback export``): ``{"prompt", "chosen", "rejected"}``
  a line, with optional ``principle``, ``source``, ``p`` (the judge's probability that chosen is better;
  1 when absent) and ``margin``.
* Anthropic HH-RLHF in its native format (``{"chosen", "rejected"}`` transcripts, ``.jsonl`` or ``.jsonl.gz``):
  the principle must be given in the spec, e.g. ``harmlessness=harmless-base-dev.jsonl.gz``.

Every prompt is held in the one rendering that serving uses (`morlaif.conversation.canonical_prompt`: an HH
transcript becomes ``a\\n\\nAssistant: b\\n\\nHuman: c``, as the same conversation sent as chat messages does), and
responses are stripped: a PM trains on the text it will be served.

Splits are by the prompt's opening turn, never by pair: all pairs of one prompt, and of every dialogue that
opens with the same human turn, land on the same side, so validation accuracy measures generalisation to
new prompts, not memory of a prompt's other pairs.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from morlaif.conversation import canonical_prompt
from morlaif.jsonl import JsonlError, iter_objects
from morlaif.principles import PRINCIPLE_NAME_RE
from morlaif.store.importers import detect_format, read_hh

__all__ = [
    "DataSpec",
    "Pair",
    "PairDataError",
    "file_sha256",
    "package_pairs",
    "parse_spec",
    "pair_bucket",
    "prompt_bucket",
    "read_pairs",
    "split_by_prompt",
    "store_pairs",
    "summarize",
]


class PairDataError(JsonlError):
    """A data spec or a record that cannot be used; the message names the file (and line)."""


@dataclass(frozen=True, slots=True)
class Pair:
    """One comparison: `chosen` is better than `rejected` with probability `p` under `principle`."""

    prompt: str
    chosen: str
    rejected: str
    p: float = 1.0
    margin: float = 0.0
    principle: str = ""
    source: str = ""

    def __post_init__(self) -> None:  # the one rendering training and serving share (module docstring)
        object.__setattr__(self, "prompt", canonical_prompt(self.prompt))
        object.__setattr__(self, "chosen", self.chosen.strip())
        object.__setattr__(self, "rejected", self.rejected.strip())


@dataclass(frozen=True, slots=True)
class DataSpec:
    path: Path
    principle: str | None

    def __str__(self) -> str:
        return f"{self.principle}={self.path}" if self.principle else str(self.path)


def parse_spec(spec: str) -> DataSpec:
    """``path`` or ``principle=path``; the file must exist."""
    principle: str | None = None
    head, sep, tail = spec.partition("=")
    if sep and PRINCIPLE_NAME_RE.match(head) and not Path(spec).exists():
        principle, spec = head, tail
    path = Path(spec)
    if not path.is_file():
        raise PairDataError(f"{path}: no such data file")
    return DataSpec(path=path, principle=principle)


def _unit_float(path: Path, n: int, obj: dict, key: str, default: float, *, upper: float | None) -> float:
    v = obj.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise PairDataError(f"{path}:{n}: field {key!r} must be a finite number, got {v!r}")
    if v < 0 or (upper is not None and v > upper):
        raise PairDataError(f"{path}:{n}: field {key!r} must be in [0, {upper if upper is not None else 'inf'}]")
    return float(v)


def read_pairs(spec: DataSpec | str | Path, *, default_principle: str | None = None) -> list[Pair]:
    """Every pair of one data file (pair JSONL or HH-RLHF); errors name `file:line`. A pair's principle is the
    spec's (``principle=path``), else its line's ``principle`` field, else `default_principle` (`pm train
    --principle`'s, for a file written for that one principle); with none of the three it is an error."""
    if isinstance(spec, Path):
        spec = DataSpec(path=spec, principle=None) if spec.is_file() else parse_spec(str(spec))
    elif isinstance(spec, str):
        spec = parse_spec(spec)
    path = spec.path
    try:
        fmt = detect_format(path)
    except JsonlError as e:
        raise PairDataError(str(e)) from e
    if fmt == "hh":
        hh_principle = spec.principle or default_principle
        if hh_principle is None:
            raise PairDataError(f"{path}: HH-RLHF transcripts carry no principle; give one as principle={path}")
        try:
            return [
                Pair(prompt=r.prompt, chosen=r.chosen, rejected=r.rejected, principle=r.principle, source=r.source)
                for r in read_hh(path, principle=hh_principle)
            ]
        except JsonlError as e:
            raise PairDataError(str(e)) from e
    out = []
    for n, obj in _objects(path):
        missing = [k for k in ("prompt", "chosen", "rejected") if not isinstance(obj.get(k), str)]
        if missing:
            raise PairDataError(f"{path}:{n}: missing or non-string field(s): {', '.join(missing)}")
        principle = spec.principle or obj.get("principle", default_principle)
        if principle is None:
            raise PairDataError(f"{path}:{n}: no valid principle on the line; give one as principle={path}")
        if not isinstance(principle, str) or not PRINCIPLE_NAME_RE.match(principle):
            raise PairDataError(
                f"{path}:{n}: field 'principle' is {principle!r}, not a principle name "
                "(lowercase letters, digits and _, starting with a letter, at most 64)"
            )
        out.append(
            Pair(
                prompt=obj["prompt"],
                chosen=obj["chosen"],
                rejected=obj["rejected"],
                p=_unit_float(path, n, obj, "p", 1.0, upper=1.0),
                margin=_unit_float(path, n, obj, "margin", 0.0, upper=None),
                principle=principle,
                source=str(obj.get("source", path.stem)),
            )
        )
    return out


def _objects(path: Path) -> Iterator[tuple[int, dict]]:
    """`iter_objects`, its errors (a line that is not a JSON object, bytes that are not UTF-8) as
    `PairDataError`: the commands answer them as every other error of the data, naming `file:line`."""
    try:
        yield from iter_objects(path)
    except PairDataError:
        raise
    except JsonlError as e:
        raise PairDataError(str(e)) from e


def store_pairs(url: str, principle: str, *, judge: str | None = None) -> list[Pair]:
    """The judge's labels of `principle` in the label store, the favoured response as `chosen`."""
    from morlaif.store import open_store

    with open_store(url) as store:
        return [
            Pair(
                prompt=r["prompt"],
                chosen=r["chosen"],
                rejected=r["rejected"],
                p=r["p"],
                principle=principle,
                source=f"store:{r['judge']}",
            )
            for r in store.preferences(principle, judge=judge)
        ]


def prompt_bucket(prompt: str, salt: str = "") -> float:
    """A number in [0, 1) fixed by the prompt's opening turn (its canonical rendering up to the first
    ``Assistant:``): the same prompt, and every dialogue that opens as it does, always falls in the same split."""
    opening = canonical_prompt(prompt).split("\n\nAssistant:", 1)[0]
    return _bucket(opening, salt)


def _bucket(key: str, salt: str) -> float:
    h = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def pair_bucket(pair: Pair, salt: str = "") -> float:
    """`prompt_bucket` of the pair's prompt; a pair without a prompt (ParaDetox's sentence rewrites) is placed by
    its rejected response, so every rewrite of one original sentence lands on the same side."""
    if pair.prompt.strip():
        return prompt_bucket(pair.prompt, salt)
    return _bucket("\x01no prompt\x01" + pair.rejected, salt)


def split_by_prompt(pairs: Sequence[Pair], fraction: float, *, salt: str = "") -> tuple[list[Pair], list[Pair]]:
    """(rest, held out): about `fraction` of the prompts, with all their pairs, are held out."""
    rest, held = [], []
    for pair in pairs:
        (held if pair_bucket(pair, salt) < fraction else rest).append(pair)
    return rest, held


def summarize(pairs: Sequence[Pair]) -> dict[str, object]:
    """Counts for provenance: pairs, prompts, pairs per source and per principle, soft labels."""
    return {
        "pairs": len(pairs),
        "prompts": len({p.prompt for p in pairs}),
        "by_source": dict(sorted(Counter(p.source for p in pairs).items())),
        "by_principle": dict(sorted(Counter(p.principle for p in pairs).items())),
        "soft_labels": sum(1 for p in pairs if p.p < 1.0),
    }


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_pairs(provenance: dict[str, Any], principle: str) -> tuple[list[Pair], list[Pair]]:
    """(train, validation) pairs of a package, rebuilt from its provenance as `pm train` read and split them (with
    `pm train --limit`, "train" is every pair outside the validation split, not only the sample it trained on).

    Raises:
        PairDataError: the package records no data files or split, trained on a label store, a data file is
            missing or changed since (its sha256 differs) or unreadable, or holds no pair of `principle` (a pooled
            package's).
    """
    data, split = provenance.get("data") or [], provenance.get("split") or {}
    if not data or "val_fraction" not in split:
        raise PairDataError(f"package {principle} records no training data files or split in its provenance")
    pairs: list[Pair] = []
    for d in data:
        if "file" not in d:
            raise PairDataError(
                f"package {principle} was trained on label-store labels ({d}); only data files can be re-read"
            )
        path = Path(d["file"])
        if not path.is_file():
            raise PairDataError(f"{path}: training data file of {principle} is missing (run from where it is)")
        if d.get("sha256") and file_sha256(path) != d["sha256"]:
            raise PairDataError(f"{path}: changed since {principle} was trained on it (sha256 differs)")
        pairs += read_pairs(DataSpec(path, d.get("principle")), default_principle=principle)
    pairs = [p for p in pairs if p.principle == principle]
    if not pairs:
        raise PairDataError(
            f"no {principle} pairs in the training files of package {principle} (a --pool package has none)"
        )
    return split_by_prompt(pairs, split["val_fraction"], salt=split.get("salt", ""))


def load_pairs(
    data: Sequence[str] | None,
    store: str | None,
    judge: str | None,
    principles: Sequence[str] | None,
    *,
    default_principle: str | None = None,
) -> tuple[list[Pair], list[dict[str, Any]]]:
    """All pairs of the data specs (``PATH`` or ``PRINCIPLE=PATH``, as `--data` takes them; `default_principle`
    for a line that names none, see `read_pairs`), plus the label store's labels of `principles` (every
    principle it has labels for when None); and their provenance (one dict per file or store principle).
    Raises `PairDataError` naming the spec, file and line, or the store without its password."""
    pairs: list[Pair] = []
    sources: list[dict[str, Any]] = []
    given: dict[tuple[Path, str | None], str] = {}
    for raw in data or []:
        spec = parse_spec(raw)
        key = (spec.path.resolve(), spec.principle)
        if key in given:  # its pairs would count twice, in training and in every accuracy
            raise PairDataError(f"--data {raw} is given twice (first as {given[key]})")
        given[key] = raw
        got = read_pairs(spec, default_principle=default_principle)
        pairs += got
        sources.append(
            {"file": str(spec.path), "principle": spec.principle, "sha256": file_sha256(spec.path), "pairs": len(got)}
        )
    if store is not None:
        from morlaif.store import StoreUnavailable, open_store
        from morlaif.store.db import display_url

        shown = display_url(store)
        try:
            if principles is None:  # pooled: every principle the store has labels for
                with open_store(store) as st:
                    principles = sorted(st.status(judge))
            for name in principles:
                got = store_pairs(store, name, judge=judge)
                pairs += got
                sources.append({"store": shown, "principle": name, "judge": judge, "pairs": len(got)})
        except StoreUnavailable as e:  # a bad URL or an unreachable server: its message hides the password
            raise PairDataError(str(e)) from e
        except Exception as e:  # a failed query: say which store, without the password
            raise PairDataError(
                f"cannot read the label store {shown}: {type(e).__name__}: {e}".replace(store, shown)
            ) from e
    return pairs, sources


def select_pairs(
    pairs: Sequence[Pair], principle: str, *, pool: bool = False, limit: int | None = None, seed: int = 0
) -> list[Pair]:
    """The pairs `pm train` trains on: those of `principle` (all of them with `pool`), at most `limit` of them
    (a sample seeded by `seed`). Raises `PairDataError` when the data holds no pair of `principle`."""
    chosen = list(pairs)
    if not pool:
        found = sorted({p.principle for p in chosen})
        chosen = [p for p in chosen if p.principle == principle]
        if not chosen:
            raise PairDataError(
                f"no pairs for principle {principle!r} in the data (it has: {', '.join(found) or 'none'}); "
                "use --pool to train on all of them"
            )
    if limit is not None and len(chosen) > limit:
        import random

        chosen = random.Random(seed).sample(chosen, limit)
    return chosen


def write_split(
    pairs: Sequence[Pair], out_dir: Path, parts: Sequence[tuple[str, float]], *, salt: str
) -> dict[str, int]:
    """Write `pairs` as pair JSONL, `out_dir/<name>.jsonl` per named part, each prompt's pairs in the part its
    `pair_bucket` falls in (fractions in order, summing to 1); the number of pairs written per part."""
    out_dir.mkdir(parents=True, exist_ok=True)
    handles = {n: (out_dir / f"{n}.jsonl").open("w", encoding="utf-8") for n, _ in parts}
    counts = dict.fromkeys(handles, 0)
    try:
        for p in pairs:
            u, acc = pair_bucket(p, salt), 0.0
            for n, f in parts:
                acc += f
                if u < acc or n == parts[-1][0]:
                    break
            rec = {
                "prompt": p.prompt,
                "chosen": p.chosen,
                "rejected": p.rejected,
                "principle": p.principle,
                "source": p.source,
            }
            if p.p < 1.0:
                rec["p"] = p.p
            handles[n].write(json.dumps(rec, ensure_ascii=False) + "\n")
            counts[n] += 1
    finally:
        for h in handles.values():
            h.close()
    return counts
