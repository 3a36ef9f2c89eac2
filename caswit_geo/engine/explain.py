"""Cross-attention maps of one pixel at each fused stage (the paper's Fig. 6).

The HR token containing the chosen pixel is the query; its attention
weights over the LR tokens (mean over heads) are drawn on the LR context
image, one panel per fused stage, with the queried pixel as a white dot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from caswit_geo.core.errors import ConfigError, InputError
from caswit_geo.core.limits import Text, bounded, check_settings
from caswit_geo.geo.context import read_tile_and_context
from caswit_geo.geo.sources import check_source, source_files
from caswit_geo.model.checkpoint import load_checkpoint
from caswit_geo.model.weights import resolve_weights
from caswit_geo.runtime.precision import PRECISIONS, resolve_precision
from caswit_geo.safeio.outputs import OutputSet
from caswit_geo.safeio.writes import save_figure


@dataclass
class ExplainConfig:
    image: Path
    out: Path
    weights: str | Path | None = None
    row: int | None = bounded(None, ge=0)  # pixel of the raster (row, col), or
    col: int | None = bounded(None, ge=0)
    x: float | None = None  # a point in the raster's CRS
    y: float | None = None
    overwrite: bool = False
    dpi: int = bounded(100, ge=10, le=1000)
    precision: str = bounded("auto", Text(choices=PRECISIONS))  # see precision.py


@dataclass
class ExplainResult:
    out: Path
    pixel: tuple[int, int]  # (row, col) in the raster
    tile: Window
    attention: dict[int, np.ndarray] = field(default_factory=dict)  # stage -> (h_s, w_s) weights, sum 1
    predicted_class: int = -1
    precision: str = "fp32"  # what ran and why (also in the PNG's "Precision" text chunk)


def display_rgb(raw: np.ndarray, scale: float) -> np.ndarray:
    """(C, H, W) raw values -> (H, W, 3) float in [0, 1] with a 2-98 % stretch for display."""
    rgb = raw[:3] if raw.shape[0] >= 3 else np.repeat(raw[:1], 3, axis=0)
    rgb = rgb.astype(np.float32) / scale
    lo, hi = np.percentile(rgb, 2), np.percentile(rgb, 98)
    return np.clip((rgb - lo) / max(hi - lo, 1e-6), 0, 1).transpose(1, 2, 0)


def check_config(config: ExplainConfig) -> None:
    """Every option checked before the model runs."""
    check_settings(config)
    for a, b in (("x", "y"), ("row", "col")):
        if (getattr(config, a) is None) != (getattr(config, b) is None):
            raise ConfigError(f"--{a} and --{b} go together")
    if config.x is not None and config.row is not None:
        raise ConfigError("give --x/--y or --row/--col, not both")
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if Path(config.out).suffix.lower().lstrip(".") not in formats:
        raise ConfigError(f"--out {config.out}: not an image format (.png, .pdf, .svg, .jpg ...)")


def explain(config: ExplainConfig) -> ExplainResult:
    """Attention maps of one pixel; the PNG appears at the end or not at all, never over an input."""
    check_config(config)
    check_source(config.image)
    weights = resolve_weights(config.weights)
    with OutputSet(overwrite=config.overwrite, inputs=[*source_files(config.image), weights]) as outs:
        out = outs.add(config.out, "--out")
        result = _explain(config, weights, outs.temp(out))
        outs.commit()
    result.out = out
    return result


def _explain(config: ExplainConfig, weights: Path, out: Path) -> ExplainResult:
    model, meta = load_checkpoint(weights)
    if meta.kind != "segmentation" or not model.config.fusion_stages:
        raise ConfigError(f"{meta.name}: a single-stream model has no cross-attention to show")
    precision = resolve_precision(config.precision, torch.device("cpu"), model, model_name=meta.name)
    spec = meta.input_spec
    T, k = spec.tile_size, spec.context_factor
    try:
        src = rasterio.open(config.image)
    except rasterio.errors.RasterioIOError as e:
        raise InputError(f"{config.image}: cannot open as a raster ({e})") from None
    with src:
        if src.count < max(spec.bands):
            raise InputError(f"{config.image}: has {src.count} bands, the model reads bands {list(spec.bands)}")
        if config.x is not None and config.y is not None:
            # in floats first: a point far outside would overflow the integer pixel index
            fcol, frow = ~src.transform * (config.x, config.y)
            if not (math.isfinite(frow) and math.isfinite(fcol) and 0 <= frow < src.height and 0 <= fcol < src.width):
                left, bottom, right, top = src.bounds
                raise InputError(f"--x {config.x:g} --y {config.y:g}: outside {config.image} "
                                 f"(x {left:g}..{right:g}, y {bottom:g}..{top:g} in its CRS)")
            row, col = int(math.floor(frow)), int(math.floor(fcol))
        elif config.row is not None and config.col is not None:
            row, col = config.row, config.col
        else:
            row, col = src.height // 2, src.width // 2
        if not (0 <= row < src.height and 0 <= col < src.width):
            raise InputError(f"{config.image}: pixel ({row}, {col}) is outside the {src.height}x{src.width} raster")
        tile = Window(col // T * T, row // T * T, T, T)
        hr_raw, lr_raw, _ = read_tile_and_context(src, tile, spec.bands, k)
    hr = torch.from_numpy(spec.normalize(hr_raw))[None]
    lr = torch.from_numpy(spec.normalize(lr_raw))[None]

    inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [
        block.register_forward_hook(lambda m, a, o, s=int(s): inputs.__setitem__(s, (a[0], a[1])))
        for s, block in model.backbone.fusion.items()
    ]
    r_in, c_in = row - int(tile.row_off), col - int(tile.col_off)
    with torch.inference_mode(), precision.autocast():
        logits = model(hr, lr)
        for h in hooks:
            h.remove()
        result = ExplainResult(out, (row, col), tile, predicted_class=int(logits[0, :, r_in, c_in].argmax()),
                               precision=precision.describe())
        for s, (x_hr, x_lr) in sorted(inputs.items()):
            _, H, W, _ = x_hr.shape  # (1, H_s, W_s, C)
            q = torch.tensor([(r_in * H // T) * W + (c_in * W // T)])
            w = model.backbone.fusion[str(s)].attention_weights(x_hr, x_lr, q).float()  # (1, heads, 1, L_lr)
            result.attention[s] = w[0, :, 0].mean(0).reshape(x_lr.shape[1], x_lr.shape[2]).numpy()

    _draw(result, display_rgb(hr_raw, spec.scale), display_rgb(lr_raw, spec.scale), T, k,
          meta.classes.names[result.predicted_class], config.dpi)
    return result


def _draw(result: ExplainResult, hr_rgb, lr_rgb, T: int, k: int, class_name: str, dpi: int) -> None:
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    r_in, c_in = result.pixel[0] - int(result.tile.row_off), result.pixel[1] - int(result.tile.col_off)
    # the HR tile is the central T/k x T/k square of the LR image
    off = (k - 1) * T / 2 / k
    lr_r, lr_c = off + r_in / k, off + c_in / k
    n = 2 + len(result.attention)
    fig = Figure(figsize=(3.2 * n, 3.6), layout="constrained")
    axes = fig.subplots(1, n)
    axes[0].imshow(hr_rgb)
    axes[0].plot(c_in, r_in, "o", color="white", markeredgecolor="black", markersize=7)
    axes[0].set_title(f"HR tile: {class_name}")
    axes[1].imshow(lr_rgb)
    axes[1].add_patch(Rectangle((off - 0.5, off - 0.5), T / k, T / k, fill=False, edgecolor="yellow", lw=1.5))
    axes[1].plot(lr_c, lr_r, "o", color="white", markeredgecolor="black", markersize=7)
    axes[1].set_title(f"LR context (x{k})")
    grey = lr_rgb.mean(axis=2)
    for ax, (s, att) in zip(axes[2:], sorted(result.attention.items())):
        ax.imshow(grey, cmap="gray")
        h, w = att.shape
        ax.imshow(att, cmap="inferno", alpha=0.6, extent=(-0.5, T - 0.5, T - 0.5, -0.5), interpolation="nearest")
        ax.plot(lr_c, lr_r, "o", color="white", markeredgecolor="black", markersize=7)
        ax.set_title(f"stage {s} ({h}x{w} LR tokens)")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"cross-attention of pixel (row {result.pixel[0]}, col {result.pixel[1]})")
    save_figure(fig, result.out, dpi, metadata={"Precision": result.precision})
