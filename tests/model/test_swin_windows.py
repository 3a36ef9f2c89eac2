"""Swin shifted windows at sizes the window does not divide: pad, then shift.

The reference is a brute-force reading of the original Swin attention
pattern along rows (which rows share a window in each block, on the grid
padded to whole windows, after the shift, with the shift mask's regions):
from it, the first row of each stage output that the bottom input rows can
reach. Everything above must not change when the bottom rows change.
"""

import pytest
import torch

import caswit_geo
from caswit_geo.model.caswit import CaswitConfig
from caswit_geo.model.encoder import SwinEncoder
from caswit_geo.model.swin_windows import PadThenShiftBlock
from tests.helpers import make_tiles_root, nano_train_config, stripes

pytestmark = pytest.mark.usefixtures("single_thread")


DEPTHS = (2, 2, 2, 2)  # one plain and one shifted block per stage
ARCH = dict(embed_dim=8, depths=DEPTHS, num_heads=(1, 2, 4, 8))


def encoder(window: int, img_size: int, windows: str) -> SwinEncoder:
    torch.manual_seed(0)
    arch = dict(ARCH, window_size=window)
    return SwinEncoder("swin_tiny_patch4_window7_224", img_size, arch_overrides=arch, windows=windows,
                       stage_norms=False).eval()


def stage_outputs(enc: SwinEncoder, x: torch.Tensor) -> list[torch.Tensor]:
    h, out = enc.embed(x), []
    for i in range(4):
        h = enc.stage(i, h)
        out.append(h)  # (B, H_s, W_s, C_s)
    return out


def swin_window_rows(height: int, window: int, shift: int) -> list[tuple[int, int]]:
    """(window index, shift-mask region) of each row of a ``height``-row grid, as original Swin lays them out.

    The grid is padded to ``Hp`` rows (a multiple of the window), rolled up by
    ``shift``, cut into windows; the mask separates the regions
    [0, Hp - window), [Hp - window, Hp - shift), [Hp - shift, Hp) of the rolled grid.
    """
    hp = -(-height // window) * window
    rows = []
    for r in range(height):
        q = (r - shift) % hp  # row in the rolled grid
        region = 0 if not shift else (0 if q < hp - window else 1 if q < hp - shift else 2)
        rows.append((q // window, region))
    return rows


def first_reachable_row(img_size: int, window: int, changed_px_rows: int) -> list[int]:
    """Per stage, the first output row that the last ``changed_px_rows`` input rows can influence."""
    height = img_size // 4
    affected = {r // 4 for r in range(img_size - changed_px_rows, img_size)}  # patch embedding: 4 x 4 px
    firsts = []
    for stage, depth in enumerate(DEPTHS):
        if stage:
            height //= 2
            affected = {r // 2 for r in affected}  # patch merging: 2 x 2 tokens
        for block in range(depth):
            shift = window // 2 if block % 2 else 0
            groups = swin_window_rows(height, window, shift)
            reached = {groups[r] for r in affected}
            affected = {r for r in range(height) if groups[r] in reached}  # attention within a window; MLP per token
        firsts.append(min(affected))
    return firsts


@pytest.mark.parametrize("window", [7, 12])
def test_top_rows_ignore_bottom_rows_beyond_the_swin_receptive_field(window):
    # at 512 px the stage grids are 128, 64, 32, 16 tokens: none is a multiple of 7 or 12
    img, changed = 512, 4
    torch.manual_seed(1)
    x = torch.randn(1, 3, img, img)
    x2 = x.clone()
    x2[:, :, -changed:] = torch.randn(1, 3, changed, img)
    bounds = first_reachable_row(img, window, changed)
    assert bounds[0] > 100 and any(0 < b for b in bounds[1:])  # the bound is a real constraint at each scale

    enc = encoder(window, img, "pad-then-shift")
    assert all(type(b) is PadThenShiftBlock for layer in enc.layers for b in layer.blocks)
    with torch.no_grad():
        a, b = stage_outputs(enc, x), stage_outputs(enc, x2)
    checked = 0
    for s, (fa, fb, first) in enumerate(zip(a, b, bounds)):
        diff = (fa - fb).abs().amax(dim=(0, 2, 3))  # per row
        assert float(diff[:first].sum()) == 0.0, f"stage {s + 1}: rows above {first} changed"
        assert float(diff[first]) > 0  # the bound is reached: it is the receptive field, not a loose one
        checked += first > 0

    assert checked >= 3

    # timm 1.0's own order (roll, then pad) lets the top rows see the bottom ones
    legacy = encoder(window, img, "shift-then-pad")
    legacy.load_state_dict(enc.state_dict())
    with torch.no_grad():
        a, b = stage_outputs(legacy, x), stage_outputs(legacy, x2)
    top = [float((fa[:, 0] - fb[:, 0]).abs().max()) for fa, fb in zip(a, b)]
    assert top[0] > 1e-4, top


def test_padding_free_size_gives_identical_outputs_with_either_order():
    # 448 px, window 7: grids of 112, 56, 28, 14 tokens, all whole windows: nothing is padded
    new, legacy = encoder(7, 448, "pad-then-shift"), encoder(7, 448, "shift-then-pad")
    legacy.load_state_dict(new.state_dict())
    x = torch.randn(2, 3, 448, 448)
    with torch.no_grad():
        for fa, fb in zip(stage_outputs(new, x), stage_outputs(legacy, x)):
            torch.testing.assert_close(fa, fb, rtol=0, atol=1e-6)


def test_named_models_are_new_and_stored_configs_without_the_fields_are_legacy():
    assert CaswitConfig().swin_windows == "pad-then-shift" and CaswitConfig().stage_norms
    cfg = caswit_geo.build_model("caswit-nano", 3).config
    stored = {k: v for k, v in cfg.to_dict().items() if k not in ("swin_windows", "stage_norms")}
    old = CaswitConfig.from_dict(stored)
    assert old.swin_windows == "shift-then-pad" and old.stage_norms is False
    assert CaswitConfig.from_dict(cfg.to_dict()) == cfg  # a config that has them keeps them
    with pytest.raises(caswit_geo.core.errors.ConfigError, match="swin_windows"):
        CaswitConfig(swin_windows="roll")


def test_runs_continued_from_older_checkpoints_keep_their_behaviour(tmp_path):
    from pathlib import Path

    from caswit_geo.engine.train.training import train
    from caswit_geo.model.checkpoint import stored_behaviour
    from caswit_geo.model.simmim import CaswitSimMIM

    shipped = Path(__file__).resolve().parents[2] / "weights" / "caswit-nano-synthetic.safetensors"
    assert stored_behaviour(shipped) == {"swin_windows": "shift-then-pad", "stage_norms": False}

    # a SimMIM checkpoint of the older behaviour initialises a model of the same behaviour
    old = caswit_geo.model.get_config("caswit-nano", num_classes=1, swin_windows="shift-then-pad", stage_norms=False)
    pretrained = caswit_geo.save_checkpoint(CaswitSimMIM(old), tmp_path / "old-ssl.safetensors")
    root = make_tiles_root(tmp_path / "data", {"a": stripes(), "b": stripes()[::-1].copy()})
    result = train(nano_train_config(root, tmp_path / "run", init=pretrained))
    assert result.model.config.swin_windows == "shift-then-pad" and not result.model.config.stage_norms
    assert result.init_report.startswith("loaded")
