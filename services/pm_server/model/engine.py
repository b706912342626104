"""The scoring engine: one base model, PEFT LoRA adapters (+ score heads) under internal names, and a
mixed-adapter forward over rows. Plain torch; it knows nothing of HTTP or queues and is not thread-safe:
exactly one thread (the batcher's model thread) may call it.

Head-only principles (a score head on the frozen base, package kind `head`) are extra output columns of
the base's own head: every head-only principle of an item is read off one base row, so a hundred of them
cost one forward.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from peft import PeftModel

from pm_server.model.base import BaseModel, score_head
from pm_server.model.grouped import GroupedLoRA, layer_index, layer_stack, unsupported_reason
from pm_server.model.package import HEAD_WEIGHTS
from pm_server.model.readout import Readout

__all__ = ["Row", "ScoringEngine", "BASE_ADAPTER", "collate"]

logger = logging.getLogger(__name__)

#: PEFT's name for "no adapter" in a mixed batch: the base model with its own (untrained) head.
BASE_ADAPTER = "__base__"


@dataclass(frozen=True, slots=True)
class Row:
    """One sequence to score with one adapter."""

    input_ids: Sequence[int]
    token_type_ids: Sequence[int] | None
    adapter: str
    #: leading tokens shared by every response to the same prompt (`Encoded.prefix_tokens`; 0: unknown)
    prefix: int = 0


class _Sequence(Protocol):
    @property
    def input_ids(self) -> Sequence[int]: ...

    @property
    def token_type_ids(self) -> Sequence[int] | None: ...


def collate(rows: Sequence[_Sequence], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded model inputs for `rows` (scoring here, training in `pm_server.training.trainer`)."""
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    types = torch.zeros((len(rows), width), dtype=torch.long) if rows[0].token_type_ids is not None else None
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.as_tensor(r.input_ids)
        mask[i, :n] = 1
        if types is not None and r.token_type_ids is not None:
            types[i, :n] = torch.as_tensor(r.token_type_ids)
    out = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if types is not None:
        out["token_type_ids"] = types.to(device)
    return out


class ScoringEngine:
    def __init__(
        self,
        base: BaseModel,
        *,
        num_threads: int | None = None,
        grouped: bool = True,
        share_trunk: bool = True,
        readout: bool = True,
        share_prefix: bool = True,
    ) -> None:
        """`grouped=False` keeps PEFT's own mixed-adapter path; `share_trunk=False` computes every row through
        every layer; `readout=False` computes the last layer at every position; `share_prefix=False`
        computes a decoder's prompt once per response (all four for comparison only: the defaults are the
        fast and exact ones)."""
        self.base = base
        self._use_grouped = grouped
        self._share = share_trunk
        self._use_readout = readout
        self._share_prefix = share_prefix
        #: prompt tokens the last batch computed once for several responses (0: none)
        self.last_prefix_tokens_saved = 0
        #: layers the last batch computed once per distinct input (0: none)
        self.last_trunk_layers = 0
        self._grouped: GroupedLoRA | None = None
        self._model: Any = base.model  # a transformers model (PEFT-wrapped once adapters load)
        self._peft: PeftModel | None = None
        self._adapters: set[str] = set()
        self._heads: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # head-only: name -> (weight, bias)
        self._head_columns: dict[str, int] = {}  # head-only name -> its logits column (0: the row's own head)
        self._head_hook: torch.utils.hooks.RemovableHandle | None = None
        self._stale: set[str] = set()  # deleted but physically kept: PEFT cannot drop its last adapter
        # transformers 5.24 renamed a decoder's `past_key_values` argument to `cache` (the old name warns)
        params = inspect.signature(type(base.model).forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._pad_id = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else 0
        self._head_pad_id = getattr(base.model.config, "pad_token_id", None)  # what the head finds rows' ends by
        if num_threads:
            torch.set_num_threads(num_threads)

    @property
    def adapters(self) -> frozenset[str]:
        return frozenset(self._adapters | set(self._heads))

    def load_adapter(self, path: Path, name: str) -> None:
        """Load a checked package (LoRA or head-only) under the internal adapter name `name`."""
        if name in self._adapters or name in self._stale or name in self._heads:
            raise ValueError(f"adapter {name!r} is already loaded")
        if (path / HEAD_WEIGHTS).is_file():
            self._load_head(path, name)
            return
        device = str(self.base.device)
        with warnings.catch_warnings():
            # PEFT 0.21 calls a transformers method that transformers 5 deprecated; nothing for us to change
            warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(
                    self.base.model, str(path), adapter_name=name, is_trainable=False, torch_device=device
                )
                self._peft.eval()
                self._model = self._peft
            else:
                # an adapter on other layers than those already loaded gets LoRA modules on their layers too,
                # with lora_B zero (no effect); PEFT 0.22 warns of their "missing adapter keys": checked below
                warnings.filterwarnings("ignore", message=r"Found missing adapter keys", category=UserWarning)
                result = self._peft.load_adapter(str(path), adapter_name=name, is_trainable=False, torch_device=device)
                self._check_loaded(name, result.missing_keys, result.unexpected_keys)
        self._adapters.add(name)
        for old in list(self._stale):
            self._delete(old)
            self._stale.discard(old)
        self._regroup()
        logger.debug("engine loaded adapter %s from %s", name, path)

    def _check_loaded(self, name: str, missing: Sequence[str], unexpected: Sequence[str]) -> None:
        """Raise ValueError unless every weight of the package was loaded and each LoRA module of adapter `name`
        that the package has no weights for adds nothing (its lora_B is zero): PEFT puts such modules on the
        layers other adapters use, outside the package's `layers_to_transform`."""
        peft = self._peft
        assert peft is not None
        ours = [k for k in unexpected if f".{name}." in k]
        if ours:
            peft.delete_adapter(name)
            raise ValueError(f"the package has weights this model has no place for: {ours[:3]}")
        missing = [k for k in missing if f".{name}." in k]
        if not missing:
            return
        own_layers = getattr(peft.peft_config[name], "layers_to_transform", None)
        stack, _ = layer_stack(peft)
        state = peft.state_dict()

        def inert(key: str) -> bool:  # a module outside the package's layers that adds nothing
            layer = layer_index(stack, key)
            outside = own_layers is not None and layer is not None and layer not in own_layers
            return outside and not state[key.replace(".lora_A.", ".lora_B.")].any()

        live = [k for k in missing if not inert(k)]
        if live:
            peft.delete_adapter(name)
            raise ValueError(f"the package has no weights for {live[:3]}")

    def _load_head(self, path: Path, name: str) -> None:
        from safetensors.torch import load_file

        t = load_file(str(path / HEAD_WEIGHTS), device=str(self.base.device))
        own: Any = score_head(self._model)
        own = getattr(own, "original_module", own)  # PEFT's wrapper keeps the base head there
        want = own.weight.shape[1]
        w = t["weight"]
        if w.dim() != 2 or w.shape != (1, want):
            raise ValueError(f"head weight has shape {list(w.shape)}; this base's head takes [1, {want}]")
        b = t.get("bias", torch.zeros(1, device=w.device))
        self._heads[name] = (w.to(own.weight.dtype), b.to(own.weight.dtype).reshape(1))
        self._regroup()
        logger.debug("engine loaded head-only principle %s from %s", name, path)

    def delete_adapter(self, name: str) -> None:
        if name in self._heads:
            del self._heads[name]
            self._regroup()
            return
        if name not in self._adapters:
            return
        self._adapters.discard(name)
        assert self._peft is not None
        if self._adapters:
            self._delete(name)
        else:
            self._stale.add(name)
        self._regroup()

    @property
    def mixed_path(self) -> str:
        """`grouped` (stacked LoRA, one batched matmul per layer) or `peft` (PEFT's adapter_names loop)."""
        return "grouped" if self._grouped is not None else "peft"

    @property
    def readout_kind(self) -> str | None:
        """`bert` or `llama` when the last layer is computed at the read position only; None otherwise."""
        return self._grouped.readout_kind if self._grouped is not None and self._use_readout else None

    @property
    def shares_prefixes(self) -> bool:
        """Whether rows that share a prompt (`Row.prefix`) compute it once per adapter (decoders, grouped path)."""
        return self._share_prefix and self._grouped is not None and self.base.family == "decoder"

    def _regroup(self) -> None:
        """Rebuild the stacked weights after the set of adapters changed (or fall back to PEFT's path),
        then the head-only columns (their hook runs after the grouped head's)."""
        if self._grouped is not None:
            self._grouped.remove()
            self._grouped = None
        if self._head_hook is not None:
            self._head_hook.remove()
            self._head_hook = None
        self._install_grouped()
        self._head_columns = {n: i + 1 for i, n in enumerate(sorted(self._heads))}
        if self._heads:
            names = sorted(self._heads)
            w = torch.cat([self._heads[n][0] for n in names])  # (H, in)
            b = torch.cat([self._heads[n][1] for n in names])  # (H,)

            def columns(module: torch.nn.Module, args: tuple[object, ...], output: torch.Tensor) -> torch.Tensor:
                x = args[0]
                assert isinstance(x, torch.Tensor)
                return torch.cat([output, torch.nn.functional.linear(x.to(w.dtype), w, b).to(output.dtype)], -1)

            self._head_hook = score_head(self._model).register_forward_hook(columns)

    def _install_grouped(self) -> None:
        if not self._use_grouped:
            return
        if self._peft is None:
            if self._heads:  # head-only principles alone: the trunk and read-out on the plain base
                self._grouped = GroupedLoRA(self._model, [])
            return
        if not self._adapters:
            return  # only stale LoRA left in PEFT's model: its adapter_names path keeps base rows clean
        names = sorted(self._adapters)
        reason = unsupported_reason(self._peft, names)
        if reason is not None:
            logger.info("mixed batches use PEFT's adapter_names path: %s", reason)
            return
        self._grouped = GroupedLoRA(self._peft, names)

    def _delete(self, name: str) -> None:
        assert self._peft is not None
        with warnings.catch_warnings():
            # PEFT warns when the deleted adapter was the "active" one; rows always name their adapter.
            warnings.filterwarnings("ignore", message=r"Adapter .* was active which is now deleted")
            self._peft.delete_adapter(name)

    @torch.inference_mode()
    def score(self, rows: Sequence[Row]) -> list[float]:
        """Raw scores of `rows` (right-padded, one mixed-adapter forward). Rows of head-only principles and
        base rows with equal inputs share one base row, whose head-only scores are extra output columns."""
        if not rows:
            return []
        for r in rows:
            if r.adapter != BASE_ADAPTER and r.adapter not in self._adapters and r.adapter not in self._heads:
                raise KeyError(f"adapter {r.adapter!r} is not loaded")
        forward: list[Row] = []
        where: list[tuple[int, int]] = []  # per row: (forward row, logits column)
        base_rows: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
        for r in rows:
            if r.adapter == BASE_ADAPTER or r.adapter in self._heads:
                key = (tuple(r.input_ids), tuple(r.token_type_ids or ()))
                i = base_rows.get(key)
                if i is None:
                    i = base_rows[key] = len(forward)
                    forward.append(Row(r.input_ids, r.token_type_ids, BASE_ADAPTER, r.prefix))
                where.append((i, self._head_columns.get(r.adapter, 0)))
            else:
                where.append((len(forward), 0))
                forward.append(r)
        logits = self._forward(forward).float()  # (F, 1 + head-only principles)
        return [float(logits[i, c]) for i, c in where]

    def _forward(self, rows: Sequence[Row]) -> torch.Tensor:
        self.last_prefix_tokens_saved = 0
        prompts = self._prompts(rows)
        if prompts is not None:
            return self._forward_prefixed(rows, *prompts)
        return self._forward_rows(rows)

    def _prompts(self, rows: Sequence[Row]) -> tuple[list[int], list[Row], list[int]] | None:
        """(where each row's prompt ends, one row per distinct (prompt, adapter), row -> its prompt row) when
        computing the prompts once (decoders; several responses to a prompt in the batch) saves at least a
        fifth of the tokens; else None."""
        if not self._share_prefix or self._grouped is None or self.base.family != "decoder":
            return None
        splits = [min(r.prefix, len(r.input_ids) - 1) for r in rows]  # a response pass reads >= 1 token
        if min(splits) < 1:
            return None
        first: dict[tuple[tuple[int, ...], str], int] = {}
        prompt_rows: list[Row] = []
        prompt_of: list[int] = []
        for r, k in zip(rows, splits, strict=True):
            key = (tuple(r.input_ids[:k]), r.adapter)
            i = first.get(key)
            if i is None:
                i = first[key] = len(prompt_rows)
                prompt_rows.append(Row(r.input_ids[:k], None, r.adapter))
            prompt_of.append(i)
        total = sum(len(r.input_ids) for r in rows)
        needed = sum(len(p.input_ids) for p in prompt_rows) + total - sum(splits)
        if needed > 0.8 * total:
            return None
        self.last_prefix_tokens_saved = total - needed
        return splits, prompt_rows, prompt_of

    def _forward_prefixed(
        self, rows: Sequence[Row], splits: Sequence[int], prompt_rows: Sequence[Row], prompt_of: Sequence[int]
    ) -> torch.Tensor:
        """A decoder's prompts once per (prompt, adapter) into a KV cache, then every response against it.

        Causal attention makes a prompt's keys and values independent of what follows, so the response
        pass sees exactly what one forward of the whole row would. The cache of each layer is gathered to
        the rows that layer sees in the response pass (distinct rows in the shared trunk, all above).
        """
        from transformers import DynamicCache

        grouped = self._grouped
        assert grouped is not None
        device = self.base.device
        slot = grouped.slot
        # 1. the prompts: every layer's keys and values into the cache (the last layer computes nothing else)
        b1 = collate(prompt_rows, self._pad_id, device)
        slots1 = torch.tensor([slot.get(r.adapter, 0) for r in prompt_rows], device=device)
        plan1 = grouped.plan(slots1, [tuple(r.input_ids) for r in prompt_rows] if self._share else None)
        cache = DynamicCache(config=self._model.config)
        ro1 = Readout(None, None) if self._use_readout else None
        with grouped.routing(slots1, plan1, ro1):
            self._model(**b1, **{self._cache_kw: cache}, use_cache=True)
        # 2. the responses, each row's cache gathered from its prompt row
        responses = [Row(r.input_ids[k:], None, r.adapter) for r, k in zip(rows, splits, strict=True)]
        b2 = collate(responses, self._pad_id, device)
        ids2 = b2["input_ids"]
        of = torch.tensor(prompt_of, device=device)
        mask = torch.cat([b1["attention_mask"].index_select(0, of), b2["attention_mask"]], 1)  # (N, P + S)
        start = torch.tensor(splits, device=device)
        positions = start[:, None] + torch.arange(ids2.shape[1], device=device)[None, :]  # (N, S)
        slots2 = torch.tensor([slot.get(r.adapter, 0) for r in rows], device=device)
        plan2 = grouped.plan(slots2, [tuple(r.input_ids) for r in rows] if self._share else None)
        everyone1 = torch.arange(len(prompt_rows), device=device)
        everyone2 = torch.arange(len(rows), device=device)
        layer: Any
        for i, layer in enumerate(cache.layers):
            cache_row = plan1[2] if plan1 is not None and i < plan1[0] else everyone1  # prompt row -> cache row
            seen = plan2[1] if plan2 is not None and i < plan2[0] else everyone2  # rows layer i sees
            idx = cache_row.index_select(0, of.index_select(0, seen))
            layer.keys = layer.keys.index_select(0, idx)
            layer.values = layer.values.index_select(0, idx)
        ro2 = None
        if self._use_readout:
            ro2 = Readout.for_batch(ids2, mask, "decoder", self._head_pad_id, cached=b1["input_ids"].shape[1])
        with grouped.routing(slots2, plan2, ro2) as shared:
            out = self._model(
                input_ids=ids2, attention_mask=mask, position_ids=positions, **{self._cache_kw: cache}, use_cache=True
            )
        self.last_trunk_layers = shared
        return out.logits

    def _forward_rows(self, rows: Sequence[Row]) -> torch.Tensor:
        device = self.base.device
        batch = collate(rows, self._pad_id, device)
        kwargs: dict[str, object] = dict(batch)
        if self.base.family == "decoder":
            kwargs["use_cache"] = False  # a scoring forward needs no KV cache
        names = [r.adapter for r in rows]
        self.last_trunk_layers = 0
        if self._grouped is not None:
            slot = self._grouped.slot
            slots = torch.tensor([slot.get(n, 0) for n in names], device=device)  # (B,)
            # rows of one item under several principles have equal inputs: their trunk is computed once
            keys = [(tuple(r.input_ids), tuple(r.token_type_ids or ())) for r in rows] if self._share else None
            readout = None
            if self._use_readout:
                readout = Readout.for_batch(
                    batch["input_ids"], batch["attention_mask"], self.base.family, self._head_pad_id
                )
            with self._grouped.routing(slots, self._grouped.plan(slots, keys), readout) as shared:
                logits = self._model(**kwargs).logits  # (B, 1 + H)
            self.last_trunk_layers = shared
            return logits
        if self._peft is not None:
            kwargs["adapter_names"] = names
        elif any(n != BASE_ADAPTER for n in names):
            raise KeyError("no adapter is loaded")
        return self._model(**kwargs).logits
