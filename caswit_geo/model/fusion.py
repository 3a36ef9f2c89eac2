"""Cross-attention fusion of LR context into HR features (paper section 3.2).

    Q = LN_q(X_hr) W_Q,  K = LN_kv(X_lr) W_K,  V = LN_kv(X_lr) W_V
    A = MHA(Q, K, V)                    (HR tokens query LR tokens)
    H' = X_hr + g * A                   (g = tanh(g_s) when gated, else 1)
    H~ = H' + MLP(LN(H'))               (ratio 4, GELU)

Attention goes through ``scaled_dot_product_attention``: at stage 1 with
T = 512 there are 16,384 queries x 16,384 keys per head, and the full
attention matrix must never be materialised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn


class FusionBlock(nn.Module):
    """HR-queries / LR-keys-values cross-attention with a residual MLP.

    Args:
        dim: channels C_s of the stage (same in both branches).
        num_heads: heads, those of the Swin stage.
        mlp_ratio: hidden width of the MLP relative to ``dim``.
        gate: learn ``g_s`` and scale the attention by ``tanh(g_s)``.
            ``g_s`` starts at 0, so a gated block initially passes the HR
            features through unchanged by the LR input and opens as it trains.
        qkv_bias: bias in the Q, K, V projections.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        gate: bool = False,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.zeros(1)) if gate else None
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def _qkv(self, x_hr: torch.Tensor, x_lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, H, W, C = x_hr.shape
        L_lr = x_lr.shape[1] * x_lr.shape[2]
        q = self.q(self.norm_q(x_hr)).reshape(B, H * W, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.kv(self.norm_kv(x_lr)).reshape(B, L_lr, 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v  # q: [B, heads, L_hr, D_h], k, v: [B, heads, L_lr, D_h]

    def gate_value(self) -> torch.Tensor | float:
        return 1.0 if self.gate is None else torch.tanh(self.gate)

    def forward(self, x_hr: torch.Tensor, x_lr: torch.Tensor) -> torch.Tensor:
        # x_hr: (B, H, W, C), x_lr: (B, h, w, C) -> (B, H, W, C)
        B, H, W, C = x_hr.shape
        q, k, v = self._qkv(x_hr, x_lr)
        a = F.scaled_dot_product_attention(q, k, v)  # [B, heads, L_hr, D_h]
        a = self.proj(a.transpose(1, 2).reshape(B, H, W, C))
        x = x_hr + self.gate_value() * a
        return x + self.mlp(self.norm_mlp(x))

    @torch.no_grad()
    def attention_weights(self, x_hr: torch.Tensor, x_lr: torch.Tensor, query_index: torch.Tensor) -> torch.Tensor:
        """Explicit softmax(QK^T / sqrt(d)) for a few HR query tokens only.

        ``query_index``: (N,) flat HR token indexes. Returns (B, heads, N, L_lr),
        for visualisation (the model itself never builds this matrix).
        """
        q, k, _ = self._qkv(x_hr, x_lr)
        q = q[:, :, query_index]  # [B, heads, N, D_h]
        return torch.softmax(q @ k.transpose(-2, -1) * self.head_dim**-0.5, dim=-1)
