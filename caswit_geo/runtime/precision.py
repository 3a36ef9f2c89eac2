"""Numeric precision of a run: fp32, or bf16 / fp16 autocast, and why.

``--precision auto`` resolves, per device and model, to:

* CUDA: bf16 where the GPU computes it natively (Ampere and later), else
  fp16 (training then scales the loss, see ``engine/loop.py``).
* CPU: bf16 on CPUs with bf16 matrix units (Intel AMX), for models whose
  narrowest linear layer is at least :data:`MIN_BF16_WIDTH` channels wide;
  fp32 otherwise. Measured on a Xeon with AMX, one thread, batch 1, models
  prepared for inference (:func:`prepare_inference`); bf16 speed-up over fp32:

  ==========================  =====  =====  =====  =====
  model                       width  T=128  T=256  T=512
  ==========================  =====  =====  =====  =====
  caswit-nano (decoder 24)    12     0.73x  0.89x  1.28x
  nano layout, decoder 64     32            1.50x
  nano layout, decoder 128    48            2.17x
  nano layout, decoder 256    64            2.68x
  caswit-tiny (decoder 512)   96     2.08x  2.97x  2.75x
  ==========================  =====  =====  =====  =====

  (caswit-tiny at 512 px: 3.6x over fp32 as predict ran it before fused
  window attention; a training step at 128 px: tiny 1.7x, nano 0.8x.)
  An AMX tile row holds 32 bf16 values: narrower matrix products leave the
  units mostly idle, and the casts autocast adds cost more than they save.
  caswit-nano gains only at four times its own tile, so width alone decides.
  CPUs with bf16 vector instructions only (avx512_bf16, no AMX) stay on fp32
  under ``auto`` (not measured); ``--precision bf16`` forces bf16 anywhere.

Every command resolves its precision here once (:func:`resolve_precision`)
and runs its forward passes in :meth:`Precision.autocast`; the summary line
and the outputs' metadata record :meth:`Precision.describe`. Inference also
takes the kernels and layout that suit the precision (:func:`prepare_inference`).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from caswit_geo.core.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where it is used: settings name precisions without it
    import torch
    from torch import nn

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# narrowest linear layer (channels) from which bf16 pays on a CPU with AMX (see the table above)
MIN_BF16_WIDTH = 32
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's reduced-precision arithmetic, as torch's kernels see it."""

    amx_bf16: bool = False  # bf16 matrix tiles (Intel Sapphire Rapids and later)
    avx512_bf16: bool = False  # bf16 dot products in vector registers
    amx_fp16: bool = False
    avx512_fp16: bool = False
    arm_bf16: bool = False  # Arm bf16 instructions (BFMMLA, e.g. Graviton 3): native, not measured here
    arm_fp16: bool = False

    @property
    def bf16(self) -> bool:
        return self.amx_bf16 or self.avx512_bf16 or self.arm_bf16

    @property
    def fp16(self) -> bool:
        return self.amx_fp16 or self.avx512_fp16 or self.arm_fp16

    def bf16_name(self) -> str:
        names = ((self.amx_bf16, "AMX bf16"), (self.avx512_bf16, "avx512_bf16"), (self.arm_bf16, "Arm bf16"))
        return next((name for have, name in names if have), "no bf16")


# CPU feature names (torch.cpu.get_capabilities() keys, /proc/cpuinfo flags) -> CpuFeatures field
FLAGS = {
    "amx_bf16": "amx_bf16", "avx512_bf16": "avx512_bf16", "amx_fp16": "amx_fp16", "avx512_fp16": "avx512_fp16",
    "bf16": "arm_bf16", "sve_bf16": "arm_bf16", "fp16_arith": "arm_fp16", "asimdhp": "arm_fp16",
}


def features_from_flags(flags: set[str] | Mapping[str, bool]) -> CpuFeatures:
    """CpuFeatures from /proc/cpuinfo flag names or torch's capability mapping."""
    have = {k for k, v in flags.items() if v is True} if isinstance(flags, Mapping) else set(flags)
    fields = {field: False for field in FLAGS.values()}
    for flag in have & set(FLAGS):
        fields[FLAGS[flag]] = True
    return CpuFeatures(**fields)


@functools.lru_cache(maxsize=1)
def detect_cpu_features() -> CpuFeatures:
    """torch's own probe (what its kernels dispatch on), else the flags of /proc/cpuinfo."""
    import torch

    probe = getattr(torch.cpu, "get_capabilities", None)
    if probe is not None:
        try:
            return features_from_flags(probe())
        except Exception:  # a probe failing on an unusual CPU: read the kernel's flags instead
            pass
    try:
        text = CPUINFO.read_text(errors="replace")[:1_000_000]
    except OSError:
        return CpuFeatures()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):  # x86, Arm
            return features_from_flags(set(line.partition(":")[2].split()))
    return CpuFeatures()


def matmul_width(model: nn.Module) -> int | None:
    """Inner dimension of the model's narrowest linear layer (a Swin encoder's stage-1 width)."""
    from torch import nn

    widths = [m.in_features for m in model.modules() if isinstance(m, nn.Linear)]
    return min(widths) if widths else None


@dataclass(frozen=True)
class Precision:
    """What a run computes in, on which device, and why."""

    name: str  # "fp32" | "bf16" | "fp16"
    device_type: str  # "cpu" | "cuda"
    reason: str  # e.g. "auto: CPU with AMX bf16, caswit-tiny is 96 channels wide"

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]

    @property
    def mixed(self) -> bool:
        return self.name != "fp32"

    @property
    def needs_loss_scaling(self) -> bool:
        """fp16 gradients underflow without a GradScaler; bf16 has fp32's range."""
        return self.name == "fp16" and self.device_type == "cuda"

    def autocast(self):
        """Context for forward passes: autocast to bf16/fp16, nothing for fp32."""
        import torch

        if not self.mixed:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def describe(self) -> str:
        """``"bf16 (auto: CPU with AMX bf16, caswit-tiny is 96 channels wide)"``."""
        return f"{self.name} ({self.reason})"


def resolve_precision(
    requested: str,
    device: torch.device,
    model: nn.Module | None = None,
    *,
    model_name: str | None = None,
    cpu: CpuFeatures | None = None,
    cuda_bf16: bool | None = None,
    option: str = "--precision",
) -> Precision:
    """Turn ``auto|fp32|bf16|fp16`` into a :class:`Precision` for ``device`` and ``model``.

    ``cpu`` and ``cuda_bf16`` replace the hardware probes (tests). An
    explicit request the hardware does not compute natively still runs
    (emulated, slower), with a warning.
    """
    import torch

    value = (requested or "auto").strip().lower()
    if value not in PRECISIONS:
        raise ConfigError(f"{option} must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    kind = device.type
    if kind not in ("cpu", "cuda"):
        return Precision("fp32", kind, f"{kind} runs fp32")
    if kind == "cuda":
        if cuda_bf16 is None:
            cuda_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        gpu = _gpu_name(device)
        if value == "auto":
            if cuda_bf16:
                return Precision("bf16", kind, f"auto: {gpu} computes bf16")
            return Precision("fp16", kind, f"auto: {gpu} has no native bf16")
        if value == "bf16" and not cuda_bf16:
            warnings.warn(f"{option} bf16: {gpu} has no native bf16, it runs emulated (slow); fp16 is native",
                          stacklevel=2)
        return Precision(value, kind, "requested")

    cpu = cpu if cpu is not None else detect_cpu_features()
    if value == "auto":
        if not cpu.amx_bf16:
            return Precision("fp32", kind, f"auto: CPU without AMX bf16 tiles ({cpu.bf16_name()})")
        width = matmul_width(model) if model is not None else None
        label = model_name or "the model"
        if width is None:
            return Precision("fp32", kind, "auto: model unknown")
        if width < MIN_BF16_WIDTH:
            return Precision(
                "fp32", kind, f"auto: {label} is {width} channels wide, bf16 pays from {MIN_BF16_WIDTH}"
            )
        return Precision("bf16", kind, f"auto: CPU with {cpu.bf16_name()}, {label} is {width} channels wide")
    if value == "bf16" and not cpu.bf16:
        warnings.warn(f"{option} bf16: this CPU has no bf16 instructions, it runs emulated (slower than fp32)",
                      stacklevel=2)
    if value == "fp16" and not cpu.fp16:
        warnings.warn(f"{option} fp16: this CPU has no fp16 instructions, it runs emulated (slower than fp32)",
                      stacklevel=2)
    return Precision(value, kind, "requested")


def _gpu_name(device: torch.device) -> str:
    import torch

    try:
        return torch.cuda.get_device_name(device)
    except Exception:  # no driver in a test, or a device gone since selection
        return "this GPU"


def prepare_inference(model: nn.Module, precision: Precision) -> nn.Module:
    """The kernels and memory layout that run ``model`` fastest in ``precision``; same maths.

    * Swin window attention through one SDPA kernel (timm's fused path)
      instead of matmul, bias, mask, softmax, matmul: encoders 2.0x faster in
      fp32 and 1.3-1.6x in bf16 on the CPU, class maps identical in fp32.
      Not on the CPU for models narrower than :data:`MIN_BF16_WIDTH`
      channels: their windows are too small for the kernel to pay
      (caswit-nano: 0.86x).
    * Under bf16 / fp16, the convolutional decoder in channels_last (NHWC):
      the Swin stages hand it NHWC maps, and with NCHW weights it mixes
      layouts and copies across them in every concatenation. 1.3-1.5x faster
      decoder in bf16, bitwise the same outputs; in fp32 oneDNN's blocked
      NCHW kernels are faster (NHWC 0.9x), so fp32 keeps the built layout.

    Figures: benchmarks/model_speed.py. Checkpoints are saved contiguous
    whatever the layout.
    """
    import torch

    if hasattr(model, "set_fused_attention"):
        wide = (matmul_width(model) or 0) >= MIN_BF16_WIDTH
        model.set_fused_attention(precision.device_type == "cuda" or wide)
    decoder = getattr(model, "decoder", None)
    if precision.mixed and decoder is not None:
        decoder.to(memory_format=torch.channels_last)
    return model
