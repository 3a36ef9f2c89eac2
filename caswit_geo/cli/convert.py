"""``caswit-geo convert``: a UPerNet-Swin checkpoint (transformers or mmsegmentation) -> caswit-geo."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from caswit_geo.cli import app
from caswit_geo.cli import options as opt
from caswit_geo.cli.console import make_console, safe


@app.command(name="convert")
def convert_cmd(
    source: Path = typer.Argument(
        ..., help="transformers UPerNet-Swin folder (config.json + model.safetensors) or mmsegmentation .pth."
    ),
    out: Path = opt.out(..., "caswit-geo checkpoint to write (.safetensors)."),
    tile_size: Optional[int] = opt.tile_size(None, "Tile size T in px, a multiple of 32. (default: 512)"),
    overwrite: bool = opt.overwrite(False, "Replace an existing --out."),
) -> None:
    """Turn a UPerNet-Swin checkpoint into the matching swin-*-upernet caswit-geo checkpoint.

    The Swin must be one of caswit-geo's variants (tiny, small, base, large;
    e.g. openmmlab/upernet-swin-* saved locally). Classes come from the
    source, the input normalisation from its preprocessor_config.json
    (ImageNet's otherwise). Nothing is downloaded. To start a CASWiT from
    such a checkpoint instead: caswit-geo train --init-upernet SOURCE.
    """
    from caswit_geo.engine.convert import ConvertConfig, convert

    result = convert(ConvertConfig(source=source, out=out, overwrite=overwrite, tile_size=tile_size))
    console = make_console()
    console.print(f"{safe(str(result.out))}: {result.model}, {len(result.classes)} classes")
    console.print(safe(str(result.report)), highlight=False)
    console.print(f"input normalisation: {safe(str(result.normalisation))}")
    for note in result.notes:
        console.print(f"note: {safe(str(note))}")
