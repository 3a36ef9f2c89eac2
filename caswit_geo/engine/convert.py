"""``convert``: a UPerNet-Swin checkpoint made elsewhere -> a caswit-geo checkpoint.

``convert(ConvertConfig(source, out)) -> ConvertResult``. The source is a
transformers model folder or an mmsegmentation ``.pth`` (``upernet_source.py``);
its Swin must be one of our named variants, and the result is the matching
single-stream model ``swin-<variant>-upernet`` with the source's classes and
input normalisation, every tensor loaded through the conversion table
(``model/upernet_keys.py``). One output file, written atomically; the source
is never written to and an existing output is only replaced with ``overwrite``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from caswit_geo.core.errors import ConfigError, OutputError
from caswit_geo.core.limits import bounded, check_settings
from caswit_geo.core.spec import ClassInfo, ClassTable
from caswit_geo.model.caswit import CASWiT, CaswitConfig
from caswit_geo.model.checkpoint import save_checkpoint
from caswit_geo.model.configs import get_config, swin_arch, variant_of
from caswit_geo.model.transfer import UperNetTransferReport, transfer_upernet
from caswit_geo.model.upernet.source import UperNetSource, read_upernet
from caswit_geo.safeio.outputs import OutputSet

SOURCE_FILES = ("config.json", "preprocessor_config.json", "model.safetensors", "pytorch_model.bin")


@dataclass
class ConvertConfig:
    source: Path  # transformers model folder or mmsegmentation .pth
    out: Path  # .safetensors to write
    overwrite: bool = False
    tile_size: int | None = bounded(None, ge=32, le=2048, multiple_of=32)  # None = the named model's (512)


@dataclass
class ConvertResult:
    out: Path
    model: str  # the named model it became, e.g. swin-tiny-upernet
    classes: ClassTable
    report: UperNetTransferReport
    normalisation: str
    notes: list[str] = field(default_factory=list)


def convert(config: ConvertConfig) -> ConvertResult:
    """Read the source, build its single-stream model, load it, write the checkpoint."""
    check_settings(config)
    source_path, out = Path(config.source), Path(config.out)
    if out.suffix != ".safetensors":
        raise OutputError(f"--out {out}: caswit-geo checkpoints are .safetensors files")
    read = [source_path] if not source_path.is_dir() else [source_path / f for f in SOURCE_FILES]
    with OutputSet(overwrite=config.overwrite, inputs=read) as outs:  # the source is never replaced
        outs.add(out, "--out")
        source = read_upernet(source_path)
        name = f"swin-{upernet_variant(source, 'SRC')}-upernet"
        tile = config.tile_size or get_config(name).img_size
        model_config = get_config(name, **upernet_overrides(source), img_size=tile)
        model = CASWiT(model_config).eval()
        report = transfer_upernet(model, source.state, source.format, str(source_path))
        classes = upernet_classes(source)
        save_checkpoint(
            model, outs.temp(out), classes=classes, input_spec=source.input_spec(model_config.img_size),
            converted_from={
                "source": source_path.name, "format": source.format, "normalisation": source.normalisation,
                "tensors_not_used": dict(Counter(report.unused.values())), "notes": source.notes,
            },
        )
        outs.commit()
    return ConvertResult(out, name, classes, report, source.normalisation, source.notes)


def upernet_variant(source: UperNetSource, option: str) -> str:
    """The named Swin variant of the source, or a ConfigError naming what it is."""
    a = source.arch
    variant = variant_of(a.embed_dim, a.depths, a.num_heads, a.window_size)
    if variant is None:
        known = "; ".join(
            f"{v}: {swin_arch(get_config(f'caswit-{v}'))}" for v in ("tiny", "small", "base", "large")
        )
        raise ConfigError(
            f"{option} {source.path}: a Swin with {a} is not one of caswit-geo's variants "
            f"(embed_dim, depths, heads, window: {known})"
        )
    return variant


def upernet_overrides(source: UperNetSource) -> dict:
    """Model config fields that follow the source: classes, bands, decoder width, UPerNet-Swin behaviour."""
    return dict(
        num_classes=source.num_classes, in_chans=source.arch.in_chans, decoder_channels=source.decoder_channels,
        swin_windows="pad-then-shift", stage_norms=True,
    )


def check_upernet_fits(source: UperNetSource, config: CaswitConfig, option: str) -> None:
    """A ConfigError unless ``config``'s encoders are the source's Swin."""
    variant = upernet_variant(source, option)
    a = source.arch
    if swin_arch(config) != (a.embed_dim, a.depths, a.num_heads, a.window_size):
        raise ConfigError(
            f"{option} {source.path}: its backbone is Swin-{variant}, not the encoders of {config.name}; "
            f"use --model caswit-{variant} (or swin-{variant}-upernet)"
        )


def upernet_classes(source: UperNetSource) -> ClassTable:
    """The source's class names (``class_i`` where it has none), with distinct colours."""
    generic = ClassTable.generic(source.num_classes)
    names = source.class_names or generic.names
    return ClassTable([ClassInfo(c.id, name, c.color) for c, name in zip(generic.classes, names)])
