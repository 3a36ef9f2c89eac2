"""Dual-stream SimMIM: masks, masked L1, mask tokens, transfer to segmentation."""

import math

import pytest
import torch

import caswit_geo
from caswit_geo.core.errors import CheckpointError
from caswit_geo.model import get_config
from caswit_geo.model.checkpoint import load_pretrained_backbone
from caswit_geo.model.simmim import CaswitSimMIM, MaskGenerator


@pytest.mark.parametrize("size,cell,ratio", [(512, 32, 0.75), (128, 32, 0.75), (128, 16, 0.7), (256, 32, 0.5)])
def test_hr_mask_ratio_and_cells_exact(size, cell, ratio):
    gen = MaskGenerator(size, cell, ratio)
    m = gen.hr_mask(torch.Generator().manual_seed(3))
    grid, per_cell = size // 4, cell // 4
    assert m.shape == (grid, grid)
    cells = size // cell
    n_masked = math.ceil(ratio * cells**2)
    # every cell is uniformly masked or kept
    blocks = m.reshape(cells, per_cell, cells, per_cell).permute(0, 2, 1, 3).reshape(cells, cells, -1)
    assert ((blocks.min(-1).values == blocks.max(-1).values)).all()
    assert int(blocks[..., 0].sum()) == n_masked
    assert int(m.sum()) == n_masked * per_cell**2


def test_hr_masks_are_random():
    gen = MaskGenerator(128, 32)
    g = torch.Generator().manual_seed(0)
    masks = {tuple(gen.hr_mask(g).flatten().tolist()) for _ in range(10)}
    assert len(masks) > 5


def test_lr_mask_centred_with_right_side():
    gen = MaskGenerator(512, 32, 0.75, lr_mask_ratio=0.5)
    m = gen.lr_mask()
    assert m.shape == (128, 128) and int(m.sum()) == 64 * 64
    rows, cols = torch.nonzero(m, as_tuple=True)
    assert (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) == (32, 95, 32, 95)
    # with k = 2 that square is exactly the HR tile's footprint in the LR image
    torch.testing.assert_close(m, m.flip(0).flip(1))


def test_masked_l1_ignores_unmasked_pixels_and_matches_hand_value():
    torch.manual_seed(0)
    target = torch.randn(1, 3, 8, 8)
    mask = torch.zeros(1, 2, 2, dtype=torch.uint8)
    mask[0, 0, 1] = 1  # token (0, 1) -> pixels rows 0..3, cols 4..7
    rec = target.clone()
    rec[:, :, 0:4, 4:8] += 2.0  # error 2 on every masked pixel
    loss = CaswitSimMIM.masked_l1(rec, target, mask)
    assert loss.item() == pytest.approx(2.0)
    rec2 = rec.clone()
    rec2[:, :, 4:, :] = 100.0  # garbage at unmasked pixels changes nothing
    rec2[:, :, :4, :4] = -50.0
    assert CaswitSimMIM.masked_l1(rec2, target, mask).item() == pytest.approx(2.0)
    rec3 = rec.clone()
    rec3[0, 1, 0, 4] += 3.0  # one more error at a masked pixel: (2*48 + 3) / 48
    assert CaswitSimMIM.masked_l1(rec3, target, mask).item() == pytest.approx((2.0 * 48 + 3.0) / 48)


def test_mask_tokens_replace_masked_tokens():
    torch.manual_seed(0)
    model = CaswitSimMIM(get_config("caswit-nano", num_classes=1))
    gen = MaskGenerator(128, 32)
    hr, lr = torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128)
    hr_mask, lr_mask = gen(torch.Generator().manual_seed(1))
    hr_mask, lr_mask = hr_mask[None], lr_mask[None]
    seen = {}
    real = model.backbone.forward_stages
    model.backbone.forward_stages = lambda x, y, *a, **kw: seen.update(x=x, y=y) or real(x, y, *a, **kw)
    rec = model.reconstruct(hr, lr, hr_mask, lr_mask)
    assert rec.shape == hr.shape
    x_embed, y_embed = model.backbone.embed(hr, lr)
    hm, lm = hr_mask[0].bool(), lr_mask[0].bool()
    torch.testing.assert_close(seen["x"][0][hm], model.hr_mask_token.reshape(1, -1).expand(int(hm.sum()), -1))
    torch.testing.assert_close(seen["x"][0][~hm], x_embed[0][~hm])
    torch.testing.assert_close(seen["y"][0][lm], model.lr_mask_token.reshape(1, -1).expand(int(lm.sum()), -1))
    torch.testing.assert_close(seen["y"][0][~lm], y_embed[0][~lm])


def test_simmim_loss_backward_reaches_both_branches_and_fusion():
    model = CaswitSimMIM(get_config("caswit-nano", num_classes=1))
    gen = MaskGenerator(128, 32)
    masks = [gen() for _ in range(2)]
    hr_mask = torch.stack([m[0] for m in masks])
    lr_mask = torch.stack([m[1] for m in masks])
    loss = model(torch.randn(2, 3, 128, 128), torch.randn(2, 3, 128, 128), hr_mask, lr_mask)
    loss.backward()
    b = model.backbone
    assert b.lr_encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert b.fusion["1"].q.weight.grad.abs().sum() > 0
    assert model.hr_mask_token.grad.abs().sum() > 0 and model.lr_mask_token.grad.abs().sum() > 0


def test_pretrained_backbone_transfers_into_segmentation_model(tmp_path):
    torch.manual_seed(0)
    pre = CaswitSimMIM(get_config("caswit-nano", num_classes=1))
    path = caswit_geo.save_checkpoint(pre, tmp_path / "pre.safetensors")
    seg = caswit_geo.build_model("caswit-nano", num_classes=7)
    decoder_before = seg.decoder.classifier.weight.clone()
    report = load_pretrained_backbone(seg, path)
    for name, p in pre.backbone.state_dict().items():
        torch.testing.assert_close(seg.backbone.state_dict()[name], p)
    torch.testing.assert_close(seg.decoder.classifier.weight, decoder_before)
    assert report.hr_encoder > 0 and report.lr_encoder == report.hr_encoder and report.fusion > 0
    assert "hr_mask_token" in report.skipped and any(k.startswith("head.") for k in report.skipped)


def test_transfer_refuses_mismatched_architecture(tmp_path):
    pre = CaswitSimMIM(get_config("caswit-nano", num_classes=1))
    path = caswit_geo.save_checkpoint(pre, tmp_path / "pre.safetensors")
    seg = caswit_geo.build_model("caswit-nano", num_classes=7, fusion_stages="4")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_pretrained_backbone(seg, path)
