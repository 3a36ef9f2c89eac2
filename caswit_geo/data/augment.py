"""Training augmentation on finished samples (the paper trains without; this is opt-in).

Geometric: a random element of the 8 flips/rotations of the square, applied
identically to ``hr``, ``lr``, ``label`` and ``lr_label``. Flipping or
rotating about the centre keeps the HR tile at the centre of its LR context,
so the two stay co-registered. Radiometric: one brightness gain and one
contrast factor per sample, applied to HR and LR alike (they show the same
photograph), on the [0, 1] values behind the normalisation; black pixels
(outside the image, nodata) stay black. Labels are never jittered.
"""

from __future__ import annotations

import torch

from caswit_geo.core.spec import InputSpec


class Augment:
    """``sample = Augment(spec)(sample)``; use as the ``transform`` of a dataset.

    Args:
        input_spec: the normalisation of the samples (to jitter real pixel values).
        flips: random horizontal and vertical flips.
        rot90: random rotations by multiples of 90 degrees.
        brightness: gain drawn in [1 - b, 1 + b] (0 = off).
        contrast: factor drawn in [1 - c, 1 + c] around the HR tile's per-band mean (0 = off).
        generator: torch RNG (default: the global one, seeded per DataLoader worker).
    """

    def __init__(
        self,
        input_spec: InputSpec,
        *,
        flips: bool = True,
        rot90: bool = True,
        brightness: float = 0.1,
        contrast: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> None:
        self.mean = torch.tensor(input_spec.mean, dtype=torch.float32)[:, None, None]  # (C, 1, 1)
        self.std = torch.tensor(input_spec.std, dtype=torch.float32)[:, None, None]
        self.flips = flips
        self.rot90 = rot90
        self.brightness = brightness
        self.contrast = contrast
        self.generator = generator

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def __call__(self, sample: dict) -> dict:
        out = dict(sample)
        keys = [k for k in ("hr", "lr", "label", "lr_label") if k in out]
        if self.flips and self._rand() < 0.5:
            for k in keys:
                out[k] = torch.flip(out[k], dims=(-1,))
        if self.flips and self._rand() < 0.5:
            for k in keys:
                out[k] = torch.flip(out[k], dims=(-2,))
        if self.rot90:
            turns = int(torch.randint(0, 4, (), generator=self.generator))
            if turns:
                for k in keys:
                    out[k] = torch.rot90(out[k], turns, dims=(-2, -1))
        if self.brightness > 0 or self.contrast > 0:
            gain = 1 + self.brightness * (2 * self._rand() - 1)
            factor = 1 + self.contrast * (2 * self._rand() - 1)
            hr = out["hr"] * self.std + self.mean  # (C, T, T) values in [0, 1]
            centre = hr.mean(dim=(-2, -1), keepdim=True)  # (C, 1, 1)
            for k in ("hr", "lr"):
                out[k] = self._jitter(out[k], gain, factor, centre)
        for k in keys:
            out[k] = out[k].contiguous()
        return out

    def _jitter(self, x: torch.Tensor, gain: float, factor: float, centre: torch.Tensor) -> torch.Tensor:
        """(C, T, T) normalised -> jittered (C, T, T) normalised; all-zero pixels unchanged."""
        u = x * self.std + self.mean
        black = (u.abs() < 1e-5).all(dim=0, keepdim=True)  # (1, T, T)
        u = (((u - centre) * factor + centre) * gain).clamp(0, 1)
        u = torch.where(black, torch.zeros_like(u), u)
        return (u - self.mean) / self.std
