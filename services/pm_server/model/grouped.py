"""Mixed-adapter forward with one gathered batched matmul per LoRA layer.

PEFT's `adapter_names=` path loops over the adapters of a batch in every LoRA layer, gathering and
scattering each adapter's rows: its cost grows with the number of principles (and, on a GPU, its kernel
launches do). Here every LoRA layer's adapters are stacked once per load into A: (slots, r, in) and
B * scaling: (slots, out, r), slot 0 all zeros for rows that use no adapter, and a forward hook adds
``bmm(bmm(x, A[slot]^T), B[slot]^T)`` to the base layer's output: four kernels whatever the number of
adapters. Score heads (PEFT's modules_to_save) are stacked the same way, slot 0 being the base head.

Shared trunk: when every adapter of a batch leaves the lower layers alone (LoRA on the upper layers only,
or a score head alone), those layers are the same computation for every principle of an item. Rows with
identical inputs are then computed once below the lowest layer any of the batch's adapters touches
(`trunk_layers`): hooks on those layers cut the batch down to one row per distinct input, and the last of
them fans the hidden states back out to every row, for the upper layers and heads to mix adapters as
above. Any argument of a layer whose first dimension is the batch is cut the same way, so this works for
the encoder and decoder layers the engine supports without knowing their signatures.

Only what this reproduces exactly is taken over: plain LoRA on Linear layers (no DoRA or other variant,
no LoRA bias) and Linear heads. Anything else leaves the engine on PEFT's own path (`unsupported_reason`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import ModulesToSaveWrapper

from pm_server.model.readout import Readout, install_readout, readout_kind

__all__ = ["GroupedLoRA"]


def layer_stack(model: torch.nn.Module) -> tuple[str | None, Sequence[torch.nn.Module]]:
    """The model's stack of transformer layers (a ModuleList of config.num_hidden_layers) and its name."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.ModuleList) and n and len(m) == n:
            return name, list(m)
    return None, []


def layer_index(layers_name: str | None, name: str) -> int | None:
    """The layer a module or parameter `name` is in, given the stack's name (`layer_stack`); None outside it."""
    if layers_name is None or not name.startswith(layers_name + "."):
        return None
    return int(name[len(layers_name) + 1 :].split(".", 1)[0])


def _take(x: Any, index: torch.Tensor, batch: int) -> Any:
    """x with every batched tensor (2+ dimensions, the first `batch`) indexed by `index`, in containers too.

    1-D tensors are left alone: a layer's only 1-D arguments are per-position (e.g. cache positions).
    """
    if isinstance(x, torch.Tensor):
        return x.index_select(0, index) if x.dim() > 1 and x.shape[0] == batch else x
    if isinstance(x, tuple):
        return tuple(_take(v, index, batch) for v in x)
    if isinstance(x, list):
        return [_take(v, index, batch) for v in x]
    if isinstance(x, dict):
        return {k: _take(v, index, batch) for k, v in x.items()}
    return x


def unsupported_reason(model: torch.nn.Module, names: Sequence[str]) -> str | None:
    """Why the grouped path cannot reproduce PEFT on `model` with adapters `names`; None when it can."""
    for mod_name, m in model.named_modules():
        if isinstance(m, LoraLayer):
            if not isinstance(m, LoraLinear):
                return f"{mod_name}: LoRA on {type(m).__name__} layers"
            for a in names:
                if a in m.lora_A:
                    if m.lora_variant.get(a) is not None:
                        return f"{mod_name}: LoRA variant (e.g. DoRA) in adapter {a}"
                    if m.lora_B[a].bias is not None:
                        return f"{mod_name}: LoRA bias in adapter {a}"
        elif isinstance(m, BaseTunerLayer):
            return f"{mod_name}: {type(m).__name__} adapters"
        elif isinstance(m, ModulesToSaveWrapper):
            mods = [m.original_module] + [m.modules_to_save[a] for a in names if a in m.modules_to_save]
            if not all(type(x) is torch.nn.Linear for x in mods):
                return f"{mod_name}: a saved module that is not a Linear layer"
    return None


class GroupedLoRA:
    """Installs the stacked weights and hooks on a PEFT model; `slots` routes rows while it is set."""

    def __init__(self, model: torch.nn.Module, names: Sequence[str]) -> None:
        self.names = list(names)
        self.slot = {a: i + 1 for i, a in enumerate(self.names)}  # 0: no adapter
        self.slots: torch.Tensor | None = None  # (N,) long, set around a forward
        self._handles: list[Any] = []
        self._disabled: list[Any] = []
        self._layers_name, layers = layer_stack(model)
        self.num_layers = len(layers)
        #: per slot, the lowest layer its LoRA touches (num_layers: none, e.g. a head-only principle)
        self.first_layer = [self.num_layers] * (len(self.names) + 1)
        self._trunk: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (layers, unique rows, inverse)
        self._layer_of: dict[int, int] = {}  # id(LoRA module) -> its layer
        with torch.no_grad():
            for mod_name, m in model.named_modules():
                if isinstance(m, LoraLinear):
                    layer = self._layer_index(mod_name)
                    self._layer_of[id(m)] = layer if layer is not None else -1
                    for a in self.names:
                        if a in m.lora_A:
                            cur = self.first_layer[self.slot[a]]
                            self.first_layer[self.slot[a]] = min(cur, layer if layer is not None else 0)
                    self._install_lora(m)
                elif isinstance(m, ModulesToSaveWrapper):
                    self._install_head(m)
        for i, layer_mod in enumerate(layers):
            self._handles.append(layer_mod.register_forward_pre_hook(self._cut(i), with_kwargs=True))
            self._handles.append(layer_mod.register_forward_hook(self._fan_out(i)))
        self._readout: Readout | None = None
        #: the last layer's exact read-out kind (`bert`, `llama`), None where it runs in full
        self.readout_kind = readout_kind(layers[-1]) if layers else None
        self._uninstall: list[Any] = []
        if self.readout_kind is not None:
            self._uninstall.append(install_readout(layers[-1], self.readout_kind, self._readout_for))

    def _layer_index(self, mod_name: str) -> int | None:
        return layer_index(self._layers_name, mod_name)  # None (outside the stack): layer 0, nothing shared

    def trunk_layers(self, slots: torch.Tensor) -> int:
        """How many lower layers no adapter of these rows' slots touches."""
        return min(self.first_layer[int(s)] for s in torch.unique(slots))

    def plan(
        self, slots: torch.Tensor, keys: Sequence[Hashable] | None
    ) -> tuple[int, torch.Tensor, torch.Tensor] | None:
        """The trunk a forward of these rows shares: (layers, first row of each distinct input, row -> its
        distinct input), or None when nothing is shared (no keys, no duplicates, an adapter on layer 0)."""
        if keys is None or self._layers_name is None:
            return None
        k = self.trunk_layers(slots)
        first: dict[Hashable, int] = {}
        uniq: list[int] = []  # the first row of each distinct input
        inverse: list[int] = []  # row -> its distinct input
        for row, key in enumerate(keys):
            u = first.get(key)
            if u is None:
                u = first[key] = len(uniq)
                uniq.append(row)
            inverse.append(u)
        if k == 0 or len(uniq) == len(keys):
            return None
        dev = slots.device
        return k, torch.tensor(uniq, device=dev), torch.tensor(inverse, device=dev)

    def _readout_for(self, batch: int) -> Readout | None:
        """The read-out of the rows the last layer sees: all rows, or the distinct ones when the trunk
        reaches the last layer (every row without LoRA)."""
        ro = self._readout
        if ro is None or self.slots is None:
            return None
        if batch == self.slots.shape[0]:
            return ro
        if self._trunk is not None and batch == self._trunk[1].shape[0]:
            return ro.take(self._trunk[1])
        return None

    @contextlib.contextmanager
    def routing(
        self,
        slots: torch.Tensor,
        plan: tuple[int, torch.Tensor, torch.Tensor] | None = None,
        readout: Readout | None = None,
    ) -> Iterator[int]:
        """Route rows to `slots` during a forward; with a `plan` (from `plan()`) share the trunk; with
        `readout` compute the last layer only where the head reads.

        Yields the number of layers computed once per distinct input (0: none shared).
        """
        self.slots = slots
        self._readout = readout if self.readout_kind is not None else None
        self._trunk = plan
        shared = plan[0] if plan is not None else 0
        try:
            yield shared
        finally:
            self.slots = None
            self._trunk = None
            self._readout = None

    def _cut(self, i: int) -> Any:
        def pre_hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if self._trunk is None or i >= self._trunk[0]:
                return None
            _, uniq, inverse = self._trunk
            n = inverse.shape[0]
            return _take(args, uniq, n), _take(kwargs, uniq, n)

        return pre_hook

    def _fan_out(self, i: int) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            if self._trunk is None or i != self._trunk[0] - 1:
                return None
            _, uniq, inverse = self._trunk
            return _take(output, inverse, uniq.shape[0])

        return hook

    def _install_lora(self, m: Any) -> None:  # a peft LoraLinear (its parameters read by name)
        present = [a for a in self.names if a in m.lora_A]
        if not present:
            return
        w = m.get_base_layer().weight
        r = max(m.lora_A[a].weight.shape[0] for a in present)
        out_f, in_f = m.lora_B[present[0]].weight.shape[0], m.lora_A[present[0]].weight.shape[1]
        a_stack = torch.zeros(len(self.names) + 1, r, in_f, dtype=w.dtype, device=w.device)
        b_stack = torch.zeros(len(self.names) + 1, out_f, r, dtype=w.dtype, device=w.device)
        for a in present:
            ra = m.lora_A[a].weight.shape[0]
            a_stack[self.slot[a], :ra] = m.lora_A[a].weight
            b_stack[self.slot[a], :, :ra] = m.lora_B[a].weight * m.scaling[a]

        layer = self._layer_of.get(id(m), -1)

        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            if self.slots is None or (self._trunk is not None and layer < self._trunk[0] and layer >= 0):
                return output  # no adapter of the batch touches this layer: base output, on distinct rows
            x = args[0]
            n = x.shape[0]
            flat = x.reshape(n, -1, x.shape[-1]).to(a_stack.dtype)  # (N, L, in)
            low = torch.bmm(flat, a_stack[self.slots].transpose(1, 2))  # (N, L, r)
            delta = torch.bmm(low, b_stack[self.slots].transpose(1, 2))  # (N, L, out)
            return output + delta.reshape(output.shape).to(output.dtype)

        self._hook(m, hook)

    def _install_head(self, m: ModulesToSaveWrapper) -> None:
        base = m.original_module
        assert isinstance(base, torch.nn.Linear)
        saved = dict(m.modules_to_save.items())  # a ModuleDict has no .get
        mods = [base] + [saved.get(a, base) for a in self.names]
        w_stack = torch.stack([x.weight for x in mods])  # (S, out, in)
        b_stack = torch.stack(
            [x.bias if x.bias is not None else torch.zeros_like(x.weight[:, 0]) for x in mods]
        )  # (S, out)

        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            if self.slots is None:
                return output
            x = args[0]
            n = x.shape[0]
            flat = x.reshape(n, -1, x.shape[-1]).to(w_stack.dtype)  # (N, L, in)
            out = torch.bmm(flat, w_stack[self.slots].transpose(1, 2)) + b_stack[self.slots][:, None, :]
            return out.reshape(output.shape).to(output.dtype)

        self._hook(m, hook)

    def _hook(self, m: Any, fn: Any) -> None:  # a peft tuner layer
        self._handles.append(m.register_forward_hook(fn))
        m.enable_adapters(False)  # the wrapped module now computes the base output; the hook adds the rest
        self._disabled.append(m)

    def remove(self) -> None:
        """Uninstall: hooks removed, PEFT's own adapter layers enabled again."""
        for h in self._handles:
            h.remove()
        for undo in self._uninstall:
            undo()
        self._uninstall.clear()
        for m in self._disabled:
            m.enable_adapters(True)
        self._handles.clear()
        self._disabled.clear()
