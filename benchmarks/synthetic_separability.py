"""Is park vs meadow decidable from the HR tile, from the LR context? A non-deep check.

On synthetic mosaics (default settings, seeds independent of any data set),
takes every 128 px tile on a 64 px stride whose labels are all one grass
class ("pure" tiles; ``--tiles ambiguous`` also admits tiles of at least
half grass whose other pixels are road, pond or trees only), and classifies
park vs meadow with a linear discriminant on:

- HR: colour and texture statistics of the 128 px tile (13 features);
- LR: colour statistics of the 256 px context window, area-downsampled to
  128 px as the model sees it, outside the tile's footprint (8 features);
- LR labels: the building share of the context window's labels (threshold).

Balanced accuracy, 5-fold cross-validation grouped by mosaic (0.5 = chance).
Also per-pixel RGB of interior grass pixels. Usage::

    python benchmarks/synthetic_separability.py                 # 150 mosaics, pure tiles
    python benchmarks/synthetic_separability.py --mosaics 100 --tiles ambiguous
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from caswit_geo.geo.context import area_downsample, nearest_downsample
from caswit_geo.synthetic import BUILDING, MEADOW, PARK, ROAD, TREES, WATER, SyntheticConfig, generate_scene

T, K, STRIDE = 128, 2, 64


def hr_features(hr: np.ndarray) -> np.ndarray:
    grey = hr.mean(0)
    gradient = np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean()
    quantiles = np.percentile(hr.reshape(3, -1), [10, 50, 90], axis=1).ravel()
    return np.r_[hr.mean((1, 2)), hr.std((1, 2)), gradient, quantiles]


def lr_features(lr: np.ndarray) -> np.ndarray:
    ring = np.ones((T, T), bool)
    ring[T // 4 : 3 * T // 4, T // 4 : 3 * T // 4] = False  # the HR footprint is the centre
    px = lr[:, ring]
    greyness = np.abs(px[1] - px[0]) + np.abs(px[1] - px[2])  # roofs and paving are grey or red, grass green
    return np.r_[px.mean(1), px.std(1), (greyness < 12).mean(), (px[0] > px[1]).mean()]


def lda_scores(x_train, y_train, x_test) -> tuple[np.ndarray, np.ndarray]:
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-9
    z_train, z_test = (x_train - mu) / sd, (x_test - mu) / sd
    m0, m1 = z_train[~y_train].mean(0), z_train[y_train].mean(0)
    within = np.cov(z_train[~y_train].T) + np.cov(z_train[y_train].T) + 1e-6 * np.eye(x_train.shape[1])
    w = np.linalg.solve(within, m1 - m0)
    return z_train @ w, z_test @ w


def balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return 0.5 * (pred[y].mean() + (~pred[~y]).mean())


def best_threshold(scores: np.ndarray, y: np.ndarray) -> float:
    candidates = np.quantile(scores, np.linspace(0.01, 0.99, 99))
    return max(candidates, key=lambda t: balanced_accuracy(scores > t, y))


def cross_validate(x: np.ndarray, y: np.ndarray, groups: np.ndarray, linear: bool = True) -> float:
    pred = np.zeros(len(y), bool)
    for fold in range(5):
        train = groups % 5 != fold
        if linear:
            s_train, s_test = lda_scores(x[train], y[train], x[~train])
        else:
            s_train, s_test = x[train, 0], x[~train, 0]
        pred[~train] = s_test > best_threshold(s_train, y[train])
    return balanced_accuracy(pred, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mosaics", type=int, default=150)
    parser.add_argument("--tiles", choices=["pure", "ambiguous"], default="pure")
    args = parser.parse_args()

    config = SyntheticConfig()
    pad = (K - 1) * T // 2
    rows, pixels = [], {PARK: [], MEADOW: []}
    n_tiles, start = 0, time.perf_counter()
    for m in range(args.mosaics):
        image, labels = generate_scene(config, np.random.default_rng([999, m]))
        image_pad = np.pad(image, ((0, 0), (pad, pad), (pad, pad)))  # black outside, as the model sees it
        labels_pad = np.pad(labels, pad, constant_values=255)
        for r in range(0, config.size - T + 1, STRIDE):
            for c in range(0, config.size - T + 1, STRIDE):
                n_tiles += 1
                tile = labels[r : r + T, c : c + T]
                grass = (tile == PARK) | (tile == MEADOW)
                kinds = np.unique(tile[grass])
                if len(kinds) != 1 or grass.mean() < 0.5:
                    continue
                only_grass_road_pond_trees = np.isin(tile, (PARK, MEADOW, ROAD, WATER, TREES)).all()
                if not (grass.all() or (args.tiles == "ambiguous" and only_grass_road_pond_trees)):
                    continue
                hr = image[:, r : r + T, c : c + T].astype(np.float32)
                lr = area_downsample(image_pad[:, r : r + K * T, c : c + K * T], K)
                lr_labels = nearest_downsample(labels_pad[r : r + K * T, c : c + K * T], K)
                rows.append((m, kinds[0] == PARK, hr_features(hr), lr_features(lr), (lr_labels == BUILDING).mean()))
        inner = (labels == PARK) | (labels == MEADOW)
        for _ in range(2):  # 2 px from anything else: past the 1 px lens blur
            inner[1:-1, 1:-1] &= inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2] & inner[1:-1, 2:]
        for cls in pixels:
            pixels[cls].append(image[:, inner & (labels == cls)].T[::7])

    groups = np.array([row[0] for row in rows])
    y = np.array([row[1] for row in rows])
    x_hr, x_lr = np.array([row[2] for row in rows]), np.array([row[3] for row in rows])
    building_share = np.array([[row[4]] for row in rows])
    print(f"{args.mosaics} mosaics of {config.size} px in {time.perf_counter() - start:.0f} s; "
          f"{len(rows)} {args.tiles} tiles of {n_tiles} (park {y.sum()}, meadow {(~y).sum()})")
    print("park vs meadow, balanced accuracy, 5-fold CV by mosaic:")
    print(f"  HR tile statistics            {cross_validate(x_hr, y, groups):.3f}")
    print(f"  LR context image statistics   {cross_validate(x_lr, y, groups):.3f}")
    print(f"  HR + LR image statistics      {cross_validate(np.c_[x_hr, x_lr], y, groups):.3f}")
    print(f"  LR context building share     {cross_validate(building_share, y, groups, linear=False):.3f}")

    park, meadow = (np.concatenate(pixels[c]).astype(np.float32) for c in (PARK, MEADOW))
    print(f"interior grass pixels (1 in 7): park {len(park)}, meadow {len(meadow)}")
    print(f"  park   RGB mean {park.mean(0).round(1)} std {park.std(0).round(1)}")
    print(f"  meadow RGB mean {meadow.mean(0).round(1)} std {meadow.std(0).round(1)}")
    x = np.concatenate([park, meadow])
    labels = np.r_[np.ones(len(park), bool), np.zeros(len(meadow), bool)]
    order = np.random.default_rng(0).permutation(len(x))
    half = len(x) // 2
    s_train, s_test = lda_scores(x[order[:half]], labels[order[:half]], x[order[half:]])
    pred = s_test > best_threshold(s_train, labels[order[:half]])
    print(f"  per-pixel RGB, held-out half  {balanced_accuracy(pred, labels[order[half:]]):.3f}")


if __name__ == "__main__":
    main()
