"""Dual-stream SimMIM pretraining (paper section 3.5).

HR: random mask, ratio 0.75, in square cells of ``mask_patch_size`` px on
the stage-1 token grid, exactly ceil(0.75 x cells) cells. LR: a centred
square whose side is ``lr_mask_ratio`` times the LR token grid side; with
k = 2 and ratio 0.5 it is the HR tile's footprint in the LR image, so the
HR content cannot simply be copied across scales. Masked tokens are replaced
right after patch embedding by a learnable mask token per branch; fusion
stays active. A 1x1 conv to ``C_in * 32^2`` channels and PixelShuffle(32)
reconstruct the HR tile from the last fused stage (through its stage norm,
when the model has them: the other stage norms get no gradient here); the loss is L1 on the
normalised pixels of masked HR cells only.

Mask convention (as MAE): 1 is masked (replaced), 0 is kept.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from caswit_geo.model.caswit import CaswitBackbone, CaswitConfig, param_groups

ENCODER_STRIDE = 32  # total downsampling of a Swin encoder
PATCH_SIZE = 4  # Swin stage-1 patch size


class MaskGenerator:
    """Random HR masks and the centred LR mask on the (T/4 x T/4) token grid.

    Args:
        input_size: tile size T in pixels.
        mask_patch_size: side of a masked HR cell in pixels (multiple of 4).
        mask_ratio: fraction of HR cells masked (rounded up).
        lr_mask_ratio: side of the centred LR square over the LR grid side.
    """

    def __init__(
        self,
        input_size: int = 512,
        mask_patch_size: int = 32,
        mask_ratio: float = 0.75,
        lr_mask_ratio: float = 0.5,
    ) -> None:
        if input_size % mask_patch_size or mask_patch_size % PATCH_SIZE:
            raise ValueError(
                f"mask_patch_size {mask_patch_size} must divide the tile size {input_size} "
                f"and be a multiple of {PATCH_SIZE}"
            )
        self.grid = input_size // PATCH_SIZE  # tokens per side
        self.cells = input_size // mask_patch_size  # mask cells per side
        self.scale = mask_patch_size // PATCH_SIZE  # tokens per cell side
        self.num_masked = math.ceil(mask_ratio * self.cells**2)
        side = lr_mask_ratio * self.grid
        if side != int(side):
            raise ValueError(f"lr_mask_ratio {lr_mask_ratio} does not give a whole number of LR tokens")
        self.lr_side = int(side)

    def hr_mask(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """(T/4, T/4) uint8, exactly ``num_masked`` random cells set to 1."""
        order = torch.randperm(self.cells**2, generator=generator)
        cells = torch.zeros(self.cells**2, dtype=torch.uint8)
        cells[order[: self.num_masked]] = 1
        cells = cells.reshape(self.cells, self.cells)
        return cells.repeat_interleave(self.scale, 0).repeat_interleave(self.scale, 1)

    def lr_mask(self) -> torch.Tensor:
        """(T/4, T/4) uint8, centred square of side ``lr_side`` set to 1."""
        m = torch.zeros(self.grid, self.grid, dtype=torch.uint8)
        start = (self.grid - self.lr_side) // 2
        m[start : start + self.lr_side, start : start + self.lr_side] = 1
        return m

    def __call__(self, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.hr_mask(generator), self.lr_mask()


class CaswitSimMIM(nn.Module):
    """Dual-stream masked image modelling on a :class:`CaswitBackbone`.

    ``model(hr, lr, hr_mask, lr_mask)`` returns the masked L1 loss;
    :meth:`reconstruct` returns the reconstruction for figures. Masks are
    (B, T/4, T/4) with 1 = masked. After pretraining, ``model.backbone``'s
    weights initialise the segmentation model (see ``transfer.py``).
    """

    def __init__(self, config: CaswitConfig, backbone_weights=None) -> None:
        super().__init__()
        if not config.dual:
            raise ValueError("SimMIM pretraining needs a dual-branch config (fusion stages not 'none')")
        self.config = config
        self.backbone = CaswitBackbone(config, backbone_weights)
        dim = self.backbone.dims[0]
        self.hr_mask_token = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.lr_mask_token = nn.Parameter(torch.zeros(1, 1, 1, dim))
        nn.init.trunc_normal_(self.hr_mask_token, std=0.02)
        nn.init.trunc_normal_(self.lr_mask_token, std=0.02)
        self.head = nn.Sequential(
            nn.Conv2d(self.backbone.dims[-1], config.in_chans * ENCODER_STRIDE**2, kernel_size=1),
            nn.PixelShuffle(ENCODER_STRIDE),
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    @staticmethod
    def apply_mask(x: torch.Tensor, mask: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        # x: (B, G, G, D), mask: (B, G, G) 1 = masked -> masked tokens become `token`
        w = mask.unsqueeze(-1).to(x.dtype)
        return x * (1 - w) + token.to(x.dtype) * w

    def reconstruct(self, hr, lr, hr_mask, lr_mask) -> torch.Tensor:
        x, y = self.backbone.embed(hr, lr)  # (B, T/4, T/4, D) each
        x = self.apply_mask(x, hr_mask, self.hr_mask_token)
        y = self.apply_mask(y, lr_mask, self.lr_mask_token)
        # the LR branch runs up to the last fused stage: nothing reads the rest
        hr_feats, _ = self.backbone.forward_stages(x, y, lr_stages=max(self.config.fusion_stages), lr_features=False)
        return self.head(hr_feats[-1])  # (B, C_in, T, T)

    @staticmethod
    def masked_l1(rec: torch.Tensor, target: torch.Tensor, hr_mask: torch.Tensor) -> torch.Tensor:
        """L1 over masked HR pixels / (C * |masked pixels|)."""
        m = hr_mask.repeat_interleave(PATCH_SIZE, 1).repeat_interleave(PATCH_SIZE, 2).unsqueeze(1).to(rec.dtype)
        l1 = (rec.float() - target.float()).abs()
        return (l1 * m).sum() / (m.sum() * rec.shape[1]).clamp_min(1e-5)

    def forward(self, hr, lr, hr_mask, lr_mask) -> torch.Tensor:
        rec = self.reconstruct(hr, lr, hr_mask, lr_mask)
        return self.masked_l1(rec, hr, hr_mask)

    def param_groups(self, weight_decay: float) -> list[dict]:
        return param_groups(self, weight_decay)
