"""``caswit-geo info``: named configs, parameter counts, checkpoint metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from caswit_geo.cli import app
from caswit_geo.cli.console import make_console, safe
from caswit_geo.core.errors import ConfigError


def _counts_for_config(config) -> dict[str, int]:
    import torch

    from caswit_geo.model.caswit import CASWiT

    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        return CASWiT(config).parameter_counts()


def describe(target: str) -> dict:
    """Config, parameter counts and (for checkpoints) classes and input spec."""
    from caswit_geo.model.checkpoint import read_meta, shape_model
    from caswit_geo.model.configs import MODEL_CONFIGS

    if target in MODEL_CONFIGS:
        config = MODEL_CONFIGS[target]
        return {"name": target, "source": "named config", "config": config.to_dict(),
                "parameters": _counts_for_config(config)}
    path = Path(target)
    if not path.exists():
        raise ConfigError(f"{target}: neither a named model (see 'caswit-geo info --list') nor an existing file")
    meta = read_meta(path)
    out = {"name": meta.name, "source": str(path), "kind": meta.kind, "config": meta.config}
    if meta.kind == "segmentation":
        out["parameters"] = shape_model(meta, path).parameter_counts()  # meta device: bounded, no memory
    spec = meta.input_spec
    out.update(
        classes=meta.classes.to_dict()["classes"],
        bands=list(spec.bands),
        scale=spec.scale,
        mean=list(spec.mean),
        std=list(spec.std),
        tile_size=spec.tile_size,
        context_factor=spec.context_factor,
        gsd=spec.gsd,
        metadata=meta.metadata,
        provenance=meta.provenance,
    )
    return out


@app.command()
def info(
    target: Optional[str] = typer.Argument(None, help="Named model or checkpoint file."),
    list_: bool = typer.Option(False, "--list", help="List the named model configs."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Describe a named model or a checkpoint: parameters per component, config, classes, input."""
    from rich.table import Table

    from caswit_geo.model.configs import MODEL_CONFIGS

    console = make_console()
    if list_ or target is None:
        rows = []
        for name, cfg in MODEL_CONFIGS.items():
            counts = _counts_for_config(cfg)
            rows.append(dict(name=name, backbone=cfg.backbone, fusion=list(cfg.fusion_stages) or "none",
                             decoder=cfg.decoder, tile_size=cfg.img_size, parameters=counts["inference_total"]))
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        table = Table(title="Named model configs")
        for col in ("name", "backbone", "fusion stages", "decoder", "tile", "parameters (inference)"):
            table.add_column(col)
        for r in rows:
            fusion = r["fusion"] if r["fusion"] == "none" else ",".join(map(str, r["fusion"]))
            table.add_row(safe(r["name"]), safe(r["backbone"]), fusion, r["decoder"], str(r["tile_size"]),
                          f"{r['parameters'] / 1e6:.2f}M")
        console.print(table)
        return
    d = describe(target)
    if as_json:
        print(json.dumps(d, indent=2, default=str))  # JSON escapes control characters itself
        return
    console.print(f"[bold]{safe(d['name'])}[/bold] ({safe(d['source'])})")
    if "parameters" in d:
        t = Table(title="Parameters")
        t.add_column("component")
        t.add_column("parameters", justify="right")
        for k, v in d["parameters"].items():
            t.add_row(safe(k), f"{v:,}")
        console.print(t)
    cfg = d["config"]
    width = cfg["decoder_dim"] if cfg["decoder"] == "segformer" else cfg["decoder_channels"]
    console.print(
        safe(f"backbone {cfg['backbone']}, fusion stages {cfg['fusion_stages'] or 'none'}, gate {cfg['gate']}, "
             f"alpha {cfg['alpha']}, decoder {cfg['decoder']} (width {width}), tile {cfg['img_size']}, "
             f"{cfg['num_classes']} classes")
    )
    if "classes" in d:
        console.print(
            safe(f"bands {d['bands']}, scale {d['scale']}, tile size {d['tile_size']}, "
                 f"context factor {d['context_factor']}, GSD {d['gsd']}")
        )
        t = Table(title="Classes")
        for col in ("id", "name", "colour"):
            t.add_column(col)
        for c in d["classes"]:
            r, g, b = (int(v) for v in c["color"])
            t.add_row(safe(c["id"]), safe(c["name"]), f"[on rgb({r},{g},{b})]      [/] #{r:02x}{g:02x}{b:02x}")
        console.print(t)
