"""Which tiles make a batch, which reader reads it, and the order the model sees them in.

Batches never span two units, and a unit's tiles come in a fixed order
(:class:`UnitBatches`), so a unit's pixels do not depend on which run
computes it. A DataLoader hands batch p of its sampler to reader p % N:
batches in plan order (a unit's tile rows, left to right) would interleave
the readers over every source block row, and each reader would decode most
blocks (a JPEG 2000 codestream tile of 1024 px holds two rows of 512 px
tiles). Instead each reader takes a run of consecutive batches that share
source block rows (:func:`reader_runs`, :func:`reader_order`), and
:func:`in_plan_order` puts the batches back in plan order before the model
sees them.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from rasterio.windows import Window
from torch.utils.data import Sampler

READER_RUN = 2  # batches a reader takes in a row at most: the model's side holds up to (readers - 1) x that


class UnitBatches(Sampler):
    """Batches of tile positions that never span two units (``sizes``: tiles per unit, in order).

    So a tile's batch, and with it the floating-point path of its forward
    pass, is the same whichever run computes its unit.
    """

    def __init__(self, sizes: list[int], batch_size: int) -> None:
        self.sizes, self.batch_size = sizes, batch_size

    def __iter__(self):
        start = 0
        for n in self.sizes:
            for s in range(0, n, self.batch_size):
                yield list(range(start + s, start + min(s + self.batch_size, n)))
            start += n

    def __len__(self) -> int:
        return sum(-(-n // self.batch_size) for n in self.sizes)


class ReaderBatches(Sampler):
    """A fixed order of batches, empty ones included (:func:`reader_order`)."""

    def __init__(self, order: list[list[int]]) -> None:
        self.order = order

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def block_rows(windows: list[Window], block_height: float) -> list[tuple[int, int]]:
    """(first, last) source block row each window meets, blocks ``block_height`` mosaic pixels high."""
    h = max(1.0, block_height)
    return [(int(int(w.row_off) // h), int((int(w.row_off) + int(w.height) - 1) // h)) for w in windows]


def reader_runs(batches: list[list[int]], rows: list[tuple[int, int]], most: int = READER_RUN) -> list[list[list[int]]]:
    """``batches`` (plan order) cut into runs of up to ``most``: a run goes on while a batch meets a block row
    of the batch before it (``rows``: each tile position's block rows)."""
    runs: list[list[list[int]]] = []
    last = (0, -1)  # the span of the batch before (set whenever ``runs`` is not empty)
    for batch in batches:
        span = (min(rows[i][0] for i in batch), max(rows[i][1] for i in batch))
        if runs and len(runs[-1]) < most and span[0] <= last[1] and last[0] <= span[1]:
            runs[-1].append(batch)
        else:
            runs.append([batch])
        last = span
    return runs


def reader_order(runs: list[list[list[int]]], readers: int) -> list[list[int]]:
    """The sampler's order for ``readers`` readers (position p read by reader p % readers): each reader takes
    the next run when done with its own, one batch per round; an empty batch where it has none left."""
    pending = iter(runs)
    current: list[list[list[int]]] = [[] for _ in range(readers)]
    order: list[list[int]] = []
    while True:
        round_ = []
        for r in range(readers):
            if not current[r]:
                current[r] = list(next(pending, []))
            round_.append(current[r].pop(0) if current[r] else [])
        if not any(round_):
            while order and not order[-1]:  # nothing to pad after the last batch
                order.pop()
            return order
        order.extend(round_)


def in_plan_order(batches: Iterable) -> Iterator:
    """``batches`` (each holding consecutive positions in ``.index``, together all from 0) in plan order;
    empty ones dropped. Holds those that arrive early."""
    held: dict[int, object] = {}
    expected = 0
    for batch in batches:
        if not len(batch.index):
            continue
        held[int(batch.index[0])] = batch
        while expected in held:
            ready = held.pop(expected)
            expected = int(ready.index[-1]) + 1
            yield ready
    if held:
        raise RuntimeError(f"batches from position {min(held)} came without those from position {expected}")
