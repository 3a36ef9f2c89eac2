"""FusionBlock against an explicit softmax(QK^T / sqrt(d)) V reference."""

import math

import pytest
import torch
import torch.nn.functional as F

from caswit_geo.model.fusion import FusionBlock


def reference_fusion(block: FusionBlock, x_hr: torch.Tensor, x_lr: torch.Tensor) -> torch.Tensor:
    """Brute force with the block's own weights: every step written out."""
    B, H, W, C = x_hr.shape
    heads, d = block.num_heads, C // block.num_heads
    xq = F.layer_norm(x_hr, (C,), block.norm_q.weight, block.norm_q.bias, block.norm_q.eps).reshape(B, H * W, C)
    xkv = F.layer_norm(x_lr, (C,), block.norm_kv.weight, block.norm_kv.bias, block.norm_kv.eps).reshape(B, -1, C)
    Wk, Wv = block.kv.weight[:C], block.kv.weight[C:]
    bk, bv = block.kv.bias[:C], block.kv.bias[C:]
    Q = xq @ block.q.weight.T + block.q.bias
    K = xkv @ Wk.T + bk
    V = xkv @ Wv.T + bv
    out = torch.zeros_like(Q)
    for b in range(B):
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            scores = Q[b, :, sl] @ K[b, :, sl].T / math.sqrt(d)  # (L_hr, L_lr), explicit
            P = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
            P = P / P.sum(dim=1, keepdim=True)
            out[b, :, sl] = P @ V[b, :, sl]
    A = out @ block.proj.weight.T + block.proj.bias
    g = 1.0 if block.gate is None else math.tanh(block.gate.item())
    Hp = x_hr.reshape(B, H * W, C) + g * A
    ln = F.layer_norm(Hp, (C,), block.norm_mlp.weight, block.norm_mlp.bias, block.norm_mlp.eps)
    hidden = F.gelu(ln @ block.mlp.fc1.weight.T + block.mlp.fc1.bias)
    Ht = Hp + hidden @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
    return Ht.reshape(B, H, W, C)


def _randomise(block: FusionBlock) -> None:
    # LayerNorms start as identity; give every parameter non-trivial values
    torch.manual_seed(1)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.3)


@pytest.mark.parametrize("gate", [False, True])
def test_fusion_matches_brute_force(gate):
    block = FusionBlock(dim=16, num_heads=4, gate=gate).double()
    _randomise(block)
    x_hr = torch.randn(2, 6, 5, 16, dtype=torch.float64)
    x_lr = torch.randn(2, 3, 4, 16, dtype=torch.float64)  # LR grid differs from HR grid
    out = block(x_hr, x_lr)
    ref = reference_fusion(block, x_hr, x_lr)
    assert out.shape == x_hr.shape
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)


def test_attention_weights_are_the_explicit_softmax():
    block = FusionBlock(dim=8, num_heads=2).double()
    _randomise(block)
    x_hr, x_lr = torch.randn(1, 4, 4, 8, dtype=torch.float64), torch.randn(1, 2, 2, 8, dtype=torch.float64)
    w = block.attention_weights(x_hr, x_lr, torch.tensor([0, 5]))
    assert w.shape == (1, 2, 2, 4)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 2, 2, dtype=torch.float64))
    q, k, _ = block._qkv(x_hr, x_lr)
    manual = torch.softmax(q[0, 1, 5] @ k[0, 1].T / math.sqrt(4), dim=-1)
    torch.testing.assert_close(w[0, 1, 1], manual)


def test_gate_starts_closed_so_lr_has_no_effect_at_init():
    block = FusionBlock(dim=16, num_heads=2, gate=True)
    assert block.gate.item() == 0.0
    x_hr = torch.randn(1, 4, 4, 16)
    out1 = block(x_hr, torch.randn(1, 2, 2, 16))
    out2 = block(x_hr, torch.randn(1, 2, 2, 16))
    torch.testing.assert_close(out1, out2)
    # at init the block is exactly X + MLP(LN(X))
    torch.testing.assert_close(out1, x_hr + block.mlp(block.norm_mlp(x_hr)))
    # once the gate opens, the LR input matters
    with torch.no_grad():
        block.gate.fill_(0.7)
    assert not torch.allclose(block(x_hr, torch.randn(1, 2, 2, 16)), block(x_hr, torch.randn(1, 2, 2, 16)))


def test_gate_receives_gradient_at_init():
    block = FusionBlock(dim=8, num_heads=2, gate=True)
    block(torch.randn(1, 4, 4, 8), torch.randn(1, 2, 2, 8)).sum().backward()
    assert block.gate.grad is not None and block.gate.grad.abs().item() > 0


def test_fusion_uses_sdpa_not_a_full_matrix(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    block = FusionBlock(dim=8, num_heads=2)
    block(torch.randn(1, 4, 4, 8), torch.randn(1, 2, 2, 8))
    assert calls == [(1, 2, 16, 4)]
