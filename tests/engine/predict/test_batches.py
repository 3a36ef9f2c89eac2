"""Batches and readers (engine/predict/batches.py): runs of batches by source block rows, the DataLoader's
order of them (position p read by reader p % N), and the plan order restored for the model."""

from types import SimpleNamespace

import pytest
import rasterio
import torch
from rasterio.windows import Window

from caswit_geo.engine.predict.batches import (
    UnitBatches,
    block_rows,
    in_plan_order,
    reader_order,
    reader_runs,
)
from caswit_geo.engine.predict.units import make_loader

T = 512


def row_windows(rows: int, cols: int) -> list[Window]:
    return [Window(c * T, r * T, T, T) for r in range(rows) for c in range(cols)]


def test_block_rows_of_tiles():
    windows = [Window(0, 0, T, T), Window(0, 512, T, T), Window(0, 768, T, T)]
    assert block_rows(windows, 1024) == [(0, 0), (0, 0), (0, 1)]
    assert block_rows(windows, 819.2) == [(0, 0), (0, 1), (0, 1)]  # 1024 px blocks of a file read at 1.25x


def test_each_reader_decodes_its_own_block_rows():
    """1024 px blocks, a batch per tile row: reader 0 reads tile rows 0-1, reader 1 rows 2-3 and so on, so no
    block row is read by two readers; the readers' batches, in order, are the plan's."""
    windows = row_windows(8, 4)
    batches = list(UnitBatches([len(windows)], 4))
    runs = reader_runs(batches, block_rows(windows, 1024))
    assert [[b[0] // 4 for b in run] for run in runs] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    order = reader_order(runs, 2)
    rows = block_rows(windows, 1024)
    by_reader = {r: [b for p, b in enumerate(order) if p % 2 == r and b] for r in range(2)}
    blocks = {r: {rows[i][0] for b in bs for i in b} for r, bs in by_reader.items()}
    assert blocks == {0: {0, 2}, 1: {1, 3}}
    assert sorted(b[0] for b in order if b) == [b[0] for b in batches]  # every batch once
    for bs in by_reader.values():
        assert [b[0] for b in bs] == sorted(b[0] for b in bs)


def test_runs_stop_at_their_length_and_at_a_new_block_row():
    windows = row_windows(6, 2)
    batches = list(UnitBatches([len(windows)], 1))  # a batch per tile: 2 per tile row
    runs = reader_runs(batches, block_rows(windows, 1024), most=3)
    # block rows 0 (tile rows 0-1: 4 batches), 1, 2: runs of at most 3, never across block rows
    assert [[b[0] for b in run] for run in runs] == [[0, 1, 2], [3], [4, 5, 6], [7], [8, 9, 10], [11]]


@pytest.mark.parametrize("readers", [2, 3, 4])
def test_uneven_runs_are_padded_so_each_reader_keeps_its_runs(readers):
    runs = [[[0], [1]], [[2]], [[3], [4]], [[5], [6]], [[7]]]
    order = reader_order(runs, readers)
    assert sorted(b[0] for b in order if b) == list(range(8))
    for run in runs:  # a run's batches go to one reader
        assert len({order.index(b) % readers for b in run}) == 1
    assert order[-1] != []  # no padding after the last batch


def test_in_plan_order_restores_the_order_and_drops_empty_batches():
    def batch(*positions):
        return SimpleNamespace(index=torch.tensor(positions, dtype=torch.long))

    arrived = [batch(0, 1), batch(4, 5), batch(), batch(2, 3), batch(8), batch(6, 7)]
    assert [b.index.tolist() for b in in_plan_order(arrived)] == [[0, 1], [2, 3], [4, 5], [6, 7], [8]]
    with pytest.raises(RuntimeError, match="position 2"):
        list(in_plan_order([batch(0, 1), batch(4, 5)]))


class _CacheSeen(torch.utils.data.Dataset):
    """Each item: the GDAL block cache size where it is read."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> int:
        return int(rasterio.env.get_gdal_config("GDAL_CACHEMAX"))

    def collate(self, items: list) -> list:
        return items


def test_readers_have_their_own_gdal_cache_not_the_prepass_one():
    """The run's process sizes GDAL's cache for the pre-pass; a forked reader would inherit it."""
    with rasterio.Env(GDAL_CACHEMAX=300 << 20):
        loader = make_loader(_CacheSeen(), [2], 1, 1, torch.device("cpu"), cache_bytes=32 << 20)
        seen = [x for batch in loader for x in batch]
        assert int(rasterio.env.get_gdal_config("GDAL_CACHEMAX")) == 300 << 20  # this process keeps its own
    assert seen == [32 << 20] * 2
