"""The transformer's building blocks: RMSNorm, grouped-query attention with RoPE, SwiGLU.

A :class:`Block` is a pre-norm LLaMA block. Its attention runs over a whole sequence (causal,
for training) or over a :class:`~wmgym.model.kv_cache.KVCache` plus the new tokens (imagination).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmgym.model.kv_cache import KVCache, apply_rope, cached_attention

if TYPE_CHECKING:
    from wmgym.model.transformer import DynamicsConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Attention(nn.Module):
    """Causal grouped-query self-attention with RoPE, optionally over a KV cache."""

    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim,
                             bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None,
                layer: int = 0, mask: Tensor | None = None) -> Tensor:
        """Attend over ``x (B, t, d)`` (causal), or with ``cache`` over the cache plus ``x``.

        With a cache the new tokens go at its ``end`` (:meth:`KVCache.append`) and ``mask`` is
        :meth:`KVCache.attn_bias`'s. ``cos, sin`` are ``(t, hd/2)``.
        """
        b, t, d = x.shape
        heads = self.qkv(x).view(b, t, self.n_head + 2 * self.n_kv, self.head_dim)
        q, k, v = heads.transpose(1, 2).split([self.n_head, self.n_kv, self.n_kv], dim=1)
        q = apply_rope(q, cos, sin)
        if cache is None:
            p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, apply_rope(k, cos, sin), v, dropout_p=p,
                                               is_causal=t > 1,
                                               enable_gqa=self.n_kv != self.n_head)
        else:
            y = cached_attention(q, *cache.append(layer, k, v, cos, sin), mask)
        return self.proj(y.to(x.dtype).transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        self.gate_up = nn.Linear(cfg.d_model, 2 * cfg.mlp_hidden, bias=False)
        self.down = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(cfg.d_model, cfg.norm_eps), Attention(cfg)
        self.mlp_norm, self.mlp = RMSNorm(cfg.d_model, cfg.norm_eps), SwiGLU(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None,
                layer: int = 0, mask: Tensor | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, cache, layer, mask))
        return x + self.drop(self.mlp(self.mlp_norm(x)))
