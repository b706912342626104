"""The last layer computed at the one position the score head reads.

A sequence-classification head reads one position of the last layer: BERT's pooler the first token,
a decoder's head the last non-pad token. Every other position of the last layer is computed and thrown
away. Here the last layer runs its keys and values over all positions (the read position attends to
them) but its query, attention output and feed-forward block only at the read position: for BERT-style
and Llama-style layers about a sixth of the layer's work. The other positions of its output keep the
layer's input; nothing reads them.

Only layer types whose computation this reproduces exactly are taken over (`readout_kind`): BERT's
(post-norm, no cross-attention) and Llama's (pre-norm, rotary, grouped-query attention, no sliding
window or query/key norms). Any other layer runs as it is.

With a KV cache (a decoder's prompt computed once for several responses, see `ScoringEngine`), the
prompt pass needs only the last layer's keys and values (`Readout.pos` None: the cache is filled and
nothing else is computed), and the response pass reads one position against the cached and new keys.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

__all__ = ["Readout", "readout_kind", "install_readout"]


class Readout:
    """Where each row is read (`pos`, (N,), into this pass's positions; None: fill the cache only) and
    which keys its query may see (`allowed`, (N, cached + T) bool)."""

    __slots__ = ("pos", "allowed")

    def __init__(self, pos: torch.Tensor | None, allowed: torch.Tensor | None) -> None:
        self.pos = pos
        self.allowed = allowed

    @classmethod
    def for_batch(
        cls,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        family: str,
        pad_id: int | None,
        *,
        cached: int = 0,
    ) -> Readout:
        """The position the model's head reads: the first token (encoders); the last token that is not the
        pad id (decoders, as transformers' sequence classification finds it), seeing keys up to it.
        `attention_mask` covers the `cached` positions of a KV cache, then this pass's."""
        n, t = input_ids.shape
        allowed = attention_mask.bool()
        if family == "encoder":
            pos = torch.zeros(n, dtype=torch.long, device=input_ids.device)
        else:
            idx = torch.arange(t, device=input_ids.device)
            if pad_id is None:
                pos = torch.full((n,), t - 1, dtype=torch.long, device=input_ids.device)
            else:
                pos = (idx * (input_ids != pad_id).long()).argmax(-1)
            keys = torch.arange(allowed.shape[1], device=input_ids.device)
            allowed = allowed & (keys[None, :] <= cached + pos[:, None])
        return cls(pos, allowed)

    def take(self, index: torch.Tensor) -> Readout:
        if self.pos is None or self.allowed is None:
            return self
        return Readout(self.pos.index_select(0, index), self.allowed.index_select(0, index))


def readout_kind(layer: torch.nn.Module) -> str | None:
    """`bert`, `llama` or None: which exact read-out computation fits this layer."""
    name = type(layer).__name__
    cfg = getattr(getattr(layer, "self_attn", None), "config", None) or getattr(
        getattr(getattr(layer, "attention", None), "self", None), "config", None
    )
    if cfg is None:
        return None
    if name == "BertLayer" and not cfg.is_decoder and not cfg.add_cross_attention:
        return "bert"
    attn = getattr(layer, "self_attn", None)
    if (
        name == "LlamaDecoderLayer"
        and attn is not None
        and not hasattr(attn, "q_norm")
        and getattr(cfg, "sliding_window", None) is None
    ):
        return "llama"
    return None


def _mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, T) bool -> the (N, 1, 1, T) additive mask of one query."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    neg = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, neg)[:, None, None, :]


def _attention(module: Any) -> Callable[..., tuple[torch.Tensor, Any]]:
    impl = module.config._attn_implementation
    if impl == "eager" or impl is None:
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[impl]


def _bert(layer: Any, hidden: torch.Tensor, ro: Readout) -> torch.Tensor:
    assert ro.pos is not None and ro.allowed is not None
    n, t, _ = hidden.shape
    rows = torch.arange(n, device=hidden.device)
    sa = layer.attention.self
    at = hidden[rows, ro.pos][:, None]  # (N, 1, H)
    d = sa.attention_head_size
    q = sa.query(at).view(n, 1, -1, d).transpose(1, 2)  # (N, heads, 1, d)
    k = sa.key(hidden).view(n, t, -1, d).transpose(1, 2)  # (N, heads, T, d)
    v = sa.value(hidden).view(n, t, -1, d).transpose(1, 2)
    out, _ = _attention(sa)(sa, q, k, v, _mask(ro.allowed, q.dtype), dropout=0.0, scaling=sa.scaling)
    a = layer.attention.output(out.reshape(n, 1, -1), at)  # dense, dropout, LayerNorm(+ residual)
    y = layer.output(layer.intermediate(a), a)  # (N, 1, H)
    result = hidden.clone()
    result[rows, ro.pos] = y[:, 0]
    return result


def _llama(layer: Any, hidden: torch.Tensor, ro: Readout, position_embeddings: Any, cache: Any) -> torch.Tensor:
    n, t, _ = hidden.shape
    rows = torch.arange(n, device=hidden.device)
    attn = layer.self_attn
    rotary = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    x = layer.input_layernorm(hidden)
    d = attn.head_dim
    k = attn.k_proj(x).view(n, t, -1, d).transpose(1, 2)  # (N, kv heads, T, d)
    v = attn.v_proj(x).view(n, t, -1, d).transpose(1, 2)
    cos, sin = position_embeddings  # (N or 1, T, d)
    cos, sin = cos.expand(n, -1, -1), sin.expand(n, -1, -1)
    k = rotary(k, k, cos, sin)[0]
    if cache is not None:
        k, v = cache.update(k, v, attn.layer_idx)  # the cached positions, then these
    if ro.pos is None or ro.allowed is None:
        return hidden  # a prompt pass: only the cache is wanted from this layer
    q = attn.q_proj(x[rows, ro.pos][:, None]).view(n, 1, -1, d).transpose(1, 2)  # (N, heads, 1, d)
    q = rotary(q, q, cos[rows, ro.pos][:, None], sin[rows, ro.pos][:, None])[0]
    out, _ = _attention(attn)(attn, q, k, v, _mask(ro.allowed, q.dtype), dropout=0.0, scaling=attn.scaling)
    h = hidden[rows, ro.pos][:, None] + attn.o_proj(out.reshape(n, 1, -1))  # (N, 1, H)
    h = h + layer.mlp(layer.post_attention_layernorm(h))
    result = hidden.clone()
    result[rows, ro.pos] = h[:, 0]
    return result


def install_readout(layer: torch.nn.Module, kind: str, current: Callable[[int], Readout | None]) -> Callable[[], None]:
    """Make `layer` compute only the read positions while `current(batch)` gives a Readout; returns an
    uninstaller. The layer's own forward runs otherwise (and for calls this does not recognise)."""
    original = layer.forward

    def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        ro = current(hidden_states.shape[0])
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # `cache` from transformers 5.24
        if ro is None or hidden_states.dim() != 3:
            return original(hidden_states, *args, **kwargs)
        if kind == "bert":  # called as (hidden, attention mask, encoder hidden states, ...)
            if cache is not None or any(a is not None for a in args[1:]):
                return original(hidden_states, *args, **kwargs)
            return _bert(layer, hidden_states, ro)
        if args:
            return original(hidden_states, *args, **kwargs)
        return _llama(layer, hidden_states, ro, kwargs["position_embeddings"], cache)

    layer.forward = forward  # an instance attribute: hooks still run around it

    def remove() -> None:
        del layer.forward

    return remove
