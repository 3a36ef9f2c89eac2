"""Model inputs of the tiles of the units to run, read in DataLoader workers.

Each worker opens its own rasterio handles (the mosaic and the LR pre-pass
raster) the first time it reads; handles never cross processes. A tile
whose HR window holds no valid pixel is returned empty and skipped by the
model. Batches hold the raw pixels (1 or 2 bytes each, not 4) and the LR
context as k x k sums: :func:`model_inputs` turns them into the model's
inputs (means, normalised with the checkpoint's statistics, never per tile)
on the model's device, so readers, shared memory and the host-to-GPU copy
move a quarter of the bytes. Adjacent tiles of a row share most of their LR
window (half of it at k = 2): a batch carries each run's LR strip once, and
each tile's window is cut from it on the device.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch.utils.data import Dataset, get_worker_info

from caswit_geo.core.spec import InputSpec
from caswit_geo.geo.context import read_canvas, read_tile_and_context
from caswit_geo.geo.lowres import ChunkReader, DecodedChunks, LowResRaster, means_in_float32
from caswit_geo.geo.masks import MaskRule, mask_rule, zero_invalid
from caswit_geo.geo.resampled import ResampledSource, open_reader


@dataclass
class TileBatch:
    """A batch of plan positions; ``hr``/``lr``/``valid`` only for the tiles to run."""

    index: torch.Tensor  # (B,) plan positions
    run: torch.Tensor  # (B,) bool: tile has valid pixels
    hr: torch.Tensor  # (N, C, T, T) raw pixels (the source's type, nodata 0), N = run.sum()
    lr: torch.Tensor | None  # (C, T, W) LR strips side by side: sums of lr_factor^2 pixels (raw); None: single-stream
    valid: torch.Tensor  # (N, T, T) bool
    lr_factor: int = 1  # k: LR values are sums of k x k source pixels (the pre-pass); 1: means read per tile
    lr_cols: torch.Tensor | None = None  # (N,) int64: tile n's LR context is lr[:, :, c:c + T], c = lr_cols[n]

    def pin_memory(self) -> "TileBatch":
        return TileBatch(
            self.index,
            self.run,
            self.hr.pin_memory(),
            None if self.lr is None else self.lr.pin_memory(),
            self.valid.pin_memory(),
            self.lr_factor,
            self.lr_cols,
        )


class LRSlice(NamedTuple):
    """A tile's LR context as a window of its run's strip: ``strip[:, :, col:col + T]``."""

    strip: torch.Tensor  # (C, T, W)
    col: int


class InputBuffers:
    """float32 CPU tensors that the model's inputs are made in, batch after batch.

    A new batch-sized tensor per input and batch is a fresh mapping on the
    CPU (glibc maps buffers that large on their own, and unmaps them when
    freed), so every page of it faults in again: that doubled the time to
    make a batch's inputs. Only for a caller that is done with one batch's
    inputs before asking for the next (the model loop).
    """

    def __init__(self) -> None:
        self._tensors: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: torch.Size) -> torch.Tensor:
        """A (N, ...) float32 tensor named ``name`` (its content undefined), a view of the largest kept."""
        kept = self._tensors.get(name)
        if kept is None or kept.shape[1:] != shape[1:] or kept.shape[0] < shape[0]:
            kept = self._tensors[name] = torch.empty(shape, dtype=torch.float32)
        return kept[: shape[0]]


def model_inputs(batch: TileBatch, spec: InputSpec, device: torch.device,
                 buffers: InputBuffers | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, C, T, T) float32 HR and LR model inputs of ``batch`` on ``device``: the LR sums divided into
    means, both normalised: the same values as ``spec.normalize`` and ``lowres.block_means`` give.
    ``buffers``: on the CPU, made in these (valid until the next call), not in new tensors."""
    reuse = buffers is not None and device.type == "cpu"
    hr = batch.hr.to(device, non_blocking=True)
    hr = _normalized(buffers.take("hr", hr.shape).copy_(hr) if reuse else hr, spec, in_place=reuse)
    if batch.lr is None:
        return hr, None
    k, kept = batch.lr_factor, buffers if reuse else None
    if k == 1:
        return hr, _normalized(_lr_windows(batch, device, torch.float32, kept), spec, in_place=True)
    if means_in_float32(torch.iinfo(batch.lr.dtype).max, k):
        lr = _lr_windows(batch, device, torch.float32, kept).div_(k * k)
    else:
        lr = _lr_windows(batch, device, torch.float64).div_(k * k).to(torch.float32)
    return hr, _normalized(lr, spec, in_place=True)  # the means are a new tensor already


def _lr_windows(batch: TileBatch, device: torch.device, dtype: torch.dtype,
                buffers: InputBuffers | None = None) -> torch.Tensor:
    """(N, C, T, T) each tile's LR window cut from the batch's strips, as ``dtype`` (float32 in ``buffers``
    when given)."""
    strips = batch.lr.to(device, non_blocking=True)  # (C, T, W)
    c, t = strips.shape[0], strips.shape[1]
    shape = torch.Size((len(batch.hr), c, t, t))
    out = buffers.take("lr", shape) if buffers is not None else torch.empty(shape, dtype=dtype, device=device)
    for n, col in enumerate(batch.lr_cols.tolist()):
        out[n].copy_(strips[:, :, col : col + t])
    return out


def _normalized(x: torch.Tensor, spec: InputSpec, in_place: bool = False) -> torch.Tensor:
    """``spec.normalize`` on a tensor (the same float32 operations, on a new tensor unless ``in_place``)."""
    y = x if in_place else x.to(torch.float32, copy=True)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=y.device)[:, None, None]
    std = torch.tensor(spec.std, dtype=torch.float32, device=y.device)[:, None, None]
    return y.div_(torch.tensor(spec.scale, dtype=torch.float32, device=y.device)).sub_(mean).div_(std)


class PredictTiles(Dataset):
    """Tile ``i`` of ``windows``: HR tile, LR context, HR validity.

    Args:
        source: what ``rasterio.open`` accepts (path or VRT XML).
        windows: tile windows in raster pixels (may extend past the raster).
        spec: bands and normalisation of the checkpoint.
        context: "prepass" (read from ``lowres``), "direct" (kT window per
            tile) or "none" (single-stream model).
        lowres: the pre-pass raster when ``context == "prepass"``.
        inside: which of ``windows`` are run (those meeting the region asked,
            ``geo/region.py``); the others are neither read nor run. None: all.
        decoded: the source pixels the pre-pass decoded for its chunks; tiles
            are copied from there when it holds them (each source pixel
            decoded once), read from ``source`` otherwise.
    """

    def __init__(
        self,
        source: "str | ResampledSource",
        windows: list[Window],
        spec: InputSpec,
        context: str,
        lowres: LowResRaster | None = None,
        inside: np.ndarray | None = None,
        decoded: DecodedChunks | None = None,
    ) -> None:
        if context not in ("prepass", "direct", "none"):
            raise ValueError(f"unknown context mode {context!r}")
        if context == "prepass" and lowres is None:
            raise ValueError("context 'prepass' needs the pre-pass raster")
        self.source, self.windows, self.spec = source, windows, spec
        self.context, self.lowres, self.decoded = context, lowres, decoded
        self.inside = inside
        # collate function of this dataset's batches: pre-pass LR values are sums of k x k pixels
        self.collate = functools.partial(collate_tiles, lr_factor=spec.context_factor if context == "prepass" else 1)
        # the pre-pass chunks this process has open; the run sets their builder's failure marker (.failed)
        self.chunks = ChunkReader()
        self._handles: tuple[int, rasterio.io.DatasetReader, MaskRule] | None = None

    def __len__(self) -> int:
        return len(self.windows)

    def _open(self) -> tuple[rasterio.io.DatasetReader, MaskRule]:
        # (re)open in each process: a GDAL handle must not be shared across a fork
        if self._handles is None or self._handles[0] != os.getpid():
            src = open_reader(self.source)
            self._handles = (os.getpid(), src, mask_rule(src, self.spec.bands))
        return self._handles[1], self._handles[2]

    def close(self) -> None:
        if self._handles is not None and self._handles[0] == os.getpid():
            self._handles[1].close()
        self._handles = None
        self.chunks.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = None
        return state

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Raw HR (C, T, T), LR (C, T, T) or None, validity (T, T); nodata pixels are 0. The LR values are
        float32 means read per tile ("direct") or k x k sums of the pre-pass ("prepass")."""
        src, rule = self._open()
        window, bands, k = self.windows[i], self.spec.bands, self.spec.context_factor
        if self.context == "direct":
            return read_tile_and_context(src, window, bands, k, mask=rule)
        hr, valid = read_canvas(src, window, bands, fill=0, with_mask=True, mask=rule)
        if not valid.any():
            return hr, None, valid
        zero_invalid(hr, valid)
        lr = self.lowres.sums_window(self.chunks, self.lowres.window_for(window)) if self.context == "prepass" else None
        return hr, lr, valid

    def __getitem__(self, i: int):
        if self.inside is not None and not self.inside[i]:
            return i, None, None, None
        hr, lr, valid = self.read(i)
        if not valid.any():
            return i, None, None, None
        x_lr = None if lr is None or self.context == "none" else torch.from_numpy(lr)
        return i, torch.from_numpy(hr), x_lr, torch.from_numpy(valid)

    def __getitems__(self, indices: list[int]) -> list:
        """A batch (the DataLoader asks for whole batches): adjacent tiles of a row share one read."""
        if self.context == "direct":
            return [self[i] for i in indices]
        if self.inside is not None:  # tiles outside the region: not read; the batch keeps its order
            run = [i for i in indices if self.inside[i]]
            read = {item[0]: item for piece in self._runs(run) for item in self._read_run(piece)}
            return [read.get(i, (i, None, None, None)) for i in indices]
        out = []
        for run in self._runs(indices):
            out.extend(self._read_run(run))
        return out

    def _runs(self, indices: list[int]) -> list[list[int]]:
        """Split ``indices`` into runs of tiles on one row at a constant column step <= T."""
        runs: list[list[int]] = []
        for i in indices:
            w = self.windows[i]
            if runs:
                run = runs[-1]
                prev = self.windows[run[-1]]
                step = int(w.col_off - prev.col_off)
                first_step = int(prev.col_off - self.windows[run[-2]].col_off) if len(run) > 1 else step
                if w.row_off == prev.row_off and 0 < step <= w.width and step == first_step:
                    run.append(i)
                    continue
            runs.append([i])
        return runs

    def _read_run(self, run: list[int]) -> list:
        src, rule = self._open()
        windows = [self.windows[i] for i in run]
        t, k, bands = int(windows[0].width), self.spec.context_factor, self.spec.bands
        c0, row = int(windows[0].col_off), int(windows[0].row_off)
        span = int(windows[-1].col_off) - c0 + t
        hr_window = Window(c0, row, span, t)
        lr_sums, hr = None, None
        if self.context == "prepass":
            # the chunks first (waiting for the pre-pass): once they exist, so do their decoded pixels
            lwin = Window(c0 // k, row // k, (span - t) // k + t, t)
            lr_sums = self.lowres.sums_window(self.chunks, lwin)  # (C, T, span')
            if self.decoded is not None:
                hr = self.decoded.read(hr_window, len(bands), src.dtypes[bands[0] - 1])
        if hr is None:
            hr = read_canvas(src, hr_window, bands, fill=0, with_mask=True, mask=rule)
        hr, valid = hr
        if not valid.any():
            return [(i, None, None, None) for i in run]
        if not valid.all():
            zero_invalid(hr, valid)
        offsets = [int(w.col_off) - c0 for w in windows]
        ran = [valid[:, off : off + t].any() for off in offsets]  # tiles with a valid pixel
        x_lr = None
        run_offsets = [off for off, r in zip(offsets, ran) if r]
        if lr_sums is not None and run_offsets:  # the run's strip, sent once: from its first tile run to its last
            first = run_offsets[0] // k
            x_lr = torch.from_numpy(lr_sums[:, :, first : run_offsets[-1] // k + t])  # (C, T, <= span')
        items = []
        for i, off, r in zip(run, offsets, ran):
            if not r:
                items.append((i, None, None, None))
                continue
            # views of the run's arrays: collating the batch is the one copy of each tile
            lr = None if x_lr is None else LRSlice(x_lr, off // k - first)
            items.append((i, torch.from_numpy(hr[:, :, off : off + t]), lr, torch.from_numpy(valid[:, off : off + t])))
        return items


def collate_tiles(items, lr_factor: int = 1) -> TileBatch:
    """A batch of ``(index, hr, lr, valid)`` items (hr None: not run). ``lr``: a (C, T, T) tensor, or an
    :class:`LRSlice` of its run's strip; each strip goes into the batch once (tiles of a run share it)."""
    run = [hr is not None for _, hr, _, _ in items]
    kept = [it for it, r in zip(items, run) if r]
    hr = _stack([it[1] for it in kept]) if kept else torch.empty(0)
    has_lr = bool(kept) and kept[0][2] is not None
    lr = lr_cols = None
    if has_lr:
        strips: dict[int, tuple[torch.Tensor, int]] = {}  # id of a strip -> (strip, its first column)
        cols, width = [], 0
        for it in kept:
            piece = it[2] if isinstance(it[2], LRSlice) else LRSlice(it[2], 0)
            if id(piece.strip) not in strips:
                strips[id(piece.strip)] = (piece.strip, width)
                width += piece.strip.shape[2]
            cols.append(strips[id(piece.strip)][1] + piece.col)
        lr = _stack([strip for strip, _ in strips.values()], axis=2)
        lr_cols = torch.tensor(cols, dtype=torch.int64)
    valid = _stack([it[3] for it in kept]) if kept else torch.empty(0, dtype=torch.bool)
    return TileBatch(torch.tensor([it[0] for it in items]), torch.tensor(run), hr, lr, valid, lr_factor, lr_cols)


def _stack(tensors: list[torch.Tensor], axis: int | None = None) -> torch.Tensor:
    """torch.stack of CPU tensors (``axis``: np.concatenate along it instead) as one plain copy in this
    thread: torch's own runs on its intra-op threads, which wait on each other whenever a core is busy
    elsewhere (the LR pre-pass beside the model, with --workers 0: ten times slower there). In a reader
    process the copy goes straight into shared memory, as torch's default collate does: sending the batch
    then copies nothing."""
    arrays = [t.numpy() for t in tensors]
    if axis is None:
        shape = (len(arrays), *arrays[0].shape)
    else:
        shape = list(arrays[0].shape)
        shape[axis] = sum(a.shape[axis] for a in arrays)
    if get_worker_info() is None:
        out = torch.from_numpy(np.empty(shape, arrays[0].dtype))
    else:
        first = tensors[0]
        storage = first._typed_storage()._new_shared(int(np.prod(shape)), device=first.device)
        out = first.new(storage).resize_(*shape)
    if axis is None:
        np.stack(arrays, out=out.numpy())
    else:
        np.concatenate(arrays, axis=axis, out=out.numpy())
    return out
