"""Batches carry raw pixels and LR sums; model_inputs gives the values the numpy reference gives."""

import numpy as np
import pytest
import torch

from caswit_geo.core.spec import InputSpec
from caswit_geo.engine.predict.source import InputBuffers, collate_tiles, model_inputs
from caswit_geo.geo.lowres import block_means, block_sums, means_in_float32, sum_dtype

CPU = torch.device("cpu")


@pytest.mark.parametrize("dtype,scale,k", [("uint8", 255.0, 2), ("uint8", 255.0, 3), ("uint16", 4095.0, 2)])
def test_model_inputs_equal_numpy_means_and_normalisation(dtype, scale, k):
    rng = np.random.default_rng(0)
    spec = InputSpec(tile_size=32, gsd=0.2, scale=scale, context_factor=k)
    vmax = int(np.iinfo(dtype).max)
    items = []
    expected = []
    for i in range(3):
        hr = rng.integers(0, vmax + 1, (3, 32, 32)).astype(dtype)
        context = rng.integers(0, vmax + 1, (3, 32 * k, 32 * k)).astype(dtype)
        sums = block_sums(context, k, sum_dtype(dtype, k))  # what the pre-pass stores
        valid = rng.random((32, 32)) > 0.1
        items.append((i, torch.from_numpy(hr), torch.from_numpy(sums), torch.from_numpy(valid)))
        # reference: the k x k mean in float64 rounded to float32 (the per-tile construction), then numpy
        means = (context.reshape(3, 32, k, 32, k).astype(np.float64).mean(axis=(2, 4))).astype(np.float32)
        np.testing.assert_array_equal(block_means(sums, k), means)
        expected.append((spec.normalize(hr), spec.normalize(means)))
    batch = collate_tiles(items, lr_factor=k)
    assert batch.hr.dtype == torch.from_numpy(np.zeros(1, dtype)).dtype  # raw: 1 or 2 bytes a pixel, not 4
    hr, lr = model_inputs(batch, spec, CPU)
    assert hr.dtype == lr.dtype == torch.float32
    for j, (want_hr, want_lr) in enumerate(expected):
        np.testing.assert_array_equal(hr[j].numpy(), want_hr)
        np.testing.assert_array_equal(lr[j].numpy(), want_lr)
    again, _ = model_inputs(batch, spec, CPU)  # the batch itself is left raw (the dry run reuses batches)
    assert torch.equal(again, hr) and batch.hr.dtype != torch.float32


def test_means_read_per_tile_are_only_normalised():
    spec = InputSpec(tile_size=32, gsd=0.2)
    means = np.random.default_rng(1).random((3, 8, 8)).astype(np.float32) * 255
    hr = np.zeros((3, 8, 8), np.uint8)
    batch = collate_tiles([(0, torch.from_numpy(hr), torch.from_numpy(means), torch.ones(8, 8, dtype=torch.bool))])
    _, lr = model_inputs(batch, spec, CPU)
    np.testing.assert_array_equal(lr[0].numpy(), spec.normalize(means))
    np.testing.assert_array_equal(batch.lr.numpy(), means)  # its strip: the one tile's, not normalised in place


@pytest.mark.parametrize("dtype,scale,k",
                         [("uint8", 255.0, 2), ("uint8", 255.0, 1), ("uint8", 255.0, 3), ("uint16", 4095.0, 2)])
def test_inputs_made_in_reused_buffers_equal_new_ones(dtype, scale, k):
    """Batches of 3, then 1 (a unit's last), then 3 tiles: the same values as new tensors, the raw batch left
    as it is, and every batch made in the first one's memory (no new tensor per batch)."""
    rng = np.random.default_rng(k)
    spec = InputSpec(tile_size=32, gsd=0.2, scale=scale, context_factor=k)
    vmax = int(np.iinfo(dtype).max)
    lr_dtype = sum_dtype(dtype, k) if k > 1 else np.dtype(np.float32)  # per-tile means when k == 1
    buffers = InputBuffers()
    pointers = []
    for n in (3, 1, 3):
        items = [(i, torch.from_numpy(rng.integers(0, vmax + 1, (3, 32, 32)).astype(dtype)),
                  torch.from_numpy((rng.random((3, 32, 32)) * vmax * k * k).astype(lr_dtype)),
                  torch.ones(32, 32, dtype=torch.bool)) for i in range(n)]
        batch = collate_tiles(items, lr_factor=k)
        raw_hr, raw_lr = batch.hr.clone(), batch.lr.clone()
        want_hr, want_lr = model_inputs(batch, spec, CPU)
        got_hr, got_lr = model_inputs(batch, spec, CPU, buffers)
        assert torch.equal(got_hr, want_hr) and torch.equal(got_lr, want_lr)
        assert got_hr.shape == (n, 3, 32, 32) and got_hr.is_contiguous()
        assert torch.equal(batch.hr, raw_hr) and torch.equal(batch.lr, raw_lr)
        pointers.append((got_hr.data_ptr(), got_lr.data_ptr()))
    hr_pointers, lr_pointers = zip(*pointers)
    assert len(set(hr_pointers)) == 1
    # the LR means made in the buffer too, unless they are computed in float64 (means_in_float32)
    assert (len(set(lr_pointers)) == 1) == (k == 1 or means_in_float32(int(np.iinfo(lr_dtype).max), k))
