"""SegFormer's all-MLP decoder (Xie et al. 2021, "SegFormer: Simple and Efficient Design for
Semantic Segmentation with Transformers", section 3.2), as transformers' ``SegformerDecodeHead``.

For stage maps x_s with C_s channels at [1/4, 1/8, 1/16, 1/32] (s = 1..4):

    F_s = Up(P_s x_s + b_s)                      linear C_s -> D, then bilinear to 1/4
    F   = W [F_4; F_3; F_2; F_1]                 1x1 conv 4D -> D, no bias (deepest first, as
                                                 the original code and transformers concatenate)
    M   = Cls(Dropout(ReLU(BN(F))))              1x1 classifier D -> K, logits at 1/4

Training runs these equations as written. Inference runs the same function
with fewer operations. W acts on a concatenation, so it splits into one
D x D block per stage, W = [W_4 | W_3 | W_2 | W_1]; a channel mixing
commutes with bilinear upsampling, which mixes pixels only; and upsampling
keeps constants, its weights summing to 1. Hence

    F = sum_s W_s Up(P_s x_s + b_s) = sum_s Up(A_s x_s) + c,   A_s = W_s P_s,  c = sum_s W_s b_s

Each stage goes through one C_s -> D map at its own resolution instead of
a C_s -> D map and a quarter of a 4D -> D one at 1/4: for a Swin-T at
512 px, about 4.5 GFLOP instead of 82, for the same logits up to float
rounding. BatchNorm at inference is a per-channel affine map, BN(F) =
g * F + h, so it folds into A_s and c too. And the channels of F stay
apart until the classifier, which sums over them: they run in groups of
GROUP channels whose logits add up, so that the D-channel map at 1/4 (50 MB
for D = 768 at 512 px) is never held whole; a group's stays in the CPU's
caches. The caller upsamples the logits to the input size.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

GROUP = 128  # channels of F at a time at inference (8 MB at 1/4 of a 512 px tile)


class SegFormerDecoder(nn.Module):
    """Multi-scale features -> class logits at 1/4 of the input.

    The folded form (module docstring) runs in eval mode when nothing needs
    gradients (``torch.no_grad``, ``torch.inference_mode``): predict, eval,
    explain, validation. Its matrices A_s and c are computed once and kept
    until the mode changes or a weight does: replaced (``.to``, loading) or
    written in place through autograd's view of it (an optimiser step, an
    edit under ``torch.no_grad``). Writes through ``.data`` are not seen
    (autograd does not count them): switch modes after such an edit.

    Args:
        encoder_channels: channels C_s of the four stage maps [1/4, 1/8, 1/16, 1/32].
        embed_dim: decoder width D (768 in SegFormer-B2 to B5, 256 in B0 and B1).
        num_classes: output classes K.
        dropout: dropout before the classifier.
    """

    def __init__(
        self,
        encoder_channels: list[int],
        embed_dim: int,
        num_classes: int,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.projections = nn.ModuleList(nn.Linear(c, embed_dim) for c in encoder_channels)  # P_s, b_s
        self.fuse = nn.Conv2d(len(encoder_channels) * embed_dim, embed_dim, 1, bias=False)  # W
        self.norm = nn.BatchNorm2d(embed_dim)
        self.act = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(embed_dim, num_classes, 1)
        self._folded: tuple[list, list[torch.Tensor], torch.Tensor] | None = None

    def train(self, mode: bool = True) -> "SegFormerDecoder":
        self._folded = None  # training changes the weights, some optimisers without telling autograd
        return super().train(mode)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        # features: NCHW maps at [1/4, 1/8, 1/16, 1/32] -> (B, K, H/4, W/4)
        if self.training or torch.is_grad_enabled():
            return self.forward_textbook(features)
        return self.forward_folded(features)

    def forward_textbook(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.act(self.norm(self.fuse_textbook(features)))
        return self.classifier(self.dropout(x))

    def fuse_textbook(self, features: list[torch.Tensor]) -> torch.Tensor:
        """F = W [F_4; F_3; F_2; F_1]: (B, D, H/4, W/4)."""
        size = features[0].shape[-2:]
        maps = []
        for proj, x in zip(self.projections, features):
            x = proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # P_s x_s + b_s: (B, D, H_s, W_s)
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            maps.append(x)
        return self.fuse(torch.cat(maps[::-1], dim=1))  # (B, 4D, H/4, W/4) -> (B, D, H/4, W/4)

    def forward_folded(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Cls(ReLU(sum_s Up(A_s x_s) + c)), by groups of channels: (B, K, H/4, W/4).

        A_s and c hold BatchNorm too (:meth:`folded_weights`). The same logits
        as :meth:`forward_textbook` in eval mode, up to float rounding."""
        weights, bias = self.folded_weights()
        size = features[0].shape[-2:]
        x = [f.permute(0, 2, 3, 1) for f in features]  # (B, H_s, W_s, C_s): channels-last, as Swin makes them
        w_cls = self.classifier.weight.flatten(1)  # (K, D)
        logits = None
        for first in range(0, self.embed_dim, GROUP):
            group = slice(first, first + GROUP)
            f = F.linear(x[0], weights[0][group], bias[group])  # stage 1 and c: (B, H/4, W/4, G)
            for a, xs in zip(weights[1:], x[1:]):
                z = F.linear(xs, a[group]).permute(0, 3, 1, 2)  # A_s x_s: (B, G, H_s, W_s)
                f += F.interpolate(z, size=size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
            part = F.linear(f.relu_(), w_cls[:, group])  # this group's share of the logits: (B, H/4, W/4, K)
            total = torch.promote_types(part.dtype, torch.float32)  # bf16/fp16 shares add up in float32
            logits = part.to(total) if logits is None else logits + part.to(total)
        logits = (logits + self.classifier.bias.to(total)).to(part.dtype)
        return logits.permute(0, 3, 1, 2).contiguous()

    @torch.compiler.disable
    def folded_weights(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``[A_1, ..., A_4]`` (each D x C_s) and ``c`` (D), BatchNorm folded in; cached until a weight changes."""
        norm = self.norm
        tensors = [*self.projections.parameters(), self.fuse.weight, norm.weight, norm.bias, norm.running_mean,
                   norm.running_var]
        cacheable = not any(t.is_inference() for t in tensors)  # tensors made in inference mode count no versions
        key = [(t.data_ptr(), t._version, t.dtype, t.device) for t in tensors] if cacheable else None
        if cacheable and self._folded is not None and self._folded[0] == key:
            return self._folded[1], self._folded[2]
        n, d = len(self.projections), self.embed_dim
        # ordinary tensors even under inference_mode, in the weights' own precision (never autocast's)
        device = self.fuse.weight.device.type
        full = torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext()
        with torch.inference_mode(False), torch.no_grad(), full:
            w = self.fuse.weight.flatten(1)  # (D, 4D): blocks [W_4 | W_3 | W_2 | W_1]
            blocks = [w[:, (n - 1 - i) * d : (n - i) * d] for i in range(n)]  # W_s, stage order
            g = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # BN(F) = g * F + h
            h = norm.bias - g * norm.running_mean
            weights = [g[:, None] * (b @ p.weight) for b, p in zip(blocks, self.projections)]  # g * W_s P_s: (D, C_s)
            bias = g * sum(b @ p.bias for b, p in zip(blocks, self.projections)) + h  # g * c + h: (D,)
        if cacheable:
            self._folded = (key, weights, bias)
        return weights, bias
