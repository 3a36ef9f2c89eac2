"""The context ablation of the paper's Table 3, on the synthetic mosaics, with either decoder.

The rows of Table 3 that vary the context, each trained on the same data
with the same budget, then scored on the test split:

=============================  ==============  =====  =====  =========
variant                        fusion stages   gate   alpha  decoder
=============================  ==============  =====  =====  =========
single stream (no context)     none            -      0      upernet
all stages + gate              all             on     0      upernet
all stages                     all             off    0      upernet
stage 1 only                   1               off    0.5    upernet
stage 4 only                   4               off    0.5    upernet
all stages (CASWiT)            all             off    0.5    upernet
single stream (no context)     none            -      0      segformer
all stages (CASWiT)            all             off    0.5    segformer
=============================  ==============  =====  =====  =========

alpha is the weight of the auxiliary LR loss (0: no LR head). The
synthetic data has two classes (park, meadow) that only the context
decides, so their IoU shows what the LR branch brings; the other classes
show it costs nothing where the HR tile decides. The last two rows ask the
same question with SegFormer's decoder: the context gain is measured
against the single stream with the same decoder.

One seed cannot tell a real effect from noise on rare classes, so every
variant is trained once per seed and each metric is reported as the mean
and the sample standard deviation (ddof 1) over seeds; ``ablation.json``
also keeps min, max and every seed's value.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from caswit_geo.core.errors import ConfigError
from caswit_geo.engine.evaluate.evaluation import EvalConfig, evaluate
from caswit_geo.engine.train.rundir import json_ready, write_json
from caswit_geo.engine.train.training import TrainConfig, train
from caswit_geo.safeio.writes import save_figure, write_text
from caswit_geo.synthetic import CONTEXT_CLASSES, SyntheticConfig, generate_dataset


@dataclass(frozen=True)
class Variant:
    key: str  # run folder and --variants name
    label: str  # table row
    model: str  # named model
    fusion_stages: str | None
    gate: bool | None
    alpha: float  # weight of the LR loss
    decoder: str = "upernet"  # upernet | segformer


VARIANTS: tuple[Variant, ...] = (
    Variant("single-stream", "single stream (no context)", "swin-nano-upernet", None, None, 0.0),
    Variant("all-gate-a0", "all stages + gate", "caswit-nano", "all", True, 0.0),
    Variant("all-a0", "all stages", "caswit-nano", "all", False, 0.0),
    Variant("stage1", "stage 1 only", "caswit-nano", "1", False, 0.5),
    Variant("stage4", "stage 4 only", "caswit-nano", "4", False, 0.5),
    Variant("all", "all stages (CASWiT)", "caswit-nano", "all", False, 0.5),
    Variant("single-stream-segformer", "single stream (no context)", "swin-nano-upernet", None, None, 0.0, "segformer"),
    Variant("all-segformer", "all stages (CASWiT)", "caswit-nano", "all", False, 0.5, "segformer"),
)
# (single stream, CASWiT) with the same decoder: what the context adds
CONTEXT_PAIRS = {"upernet": ("single-stream", "all"), "segformer": ("single-stream-segformer", "all-segformer")}
METRICS = ("mIoU", "mF1", "mBIoU", "OA")
SPREAD = "sample standard deviation over seeds (ddof 1)"


def parse_seeds(text: str, first: int = 0) -> tuple[int, ...]:
    """``"3"`` -> seeds ``first .. first+2``; ``"0,4,9"`` (or ``"0 4 9"``) -> those seeds."""
    items = [t for t in str(text).replace(",", " ").split() if t]
    try:
        values = [int(t) for t in items]
    except ValueError:
        raise ConfigError(f"--seeds must be a count or a list of integers, got {text!r}") from None
    if len(values) == 1 and "," not in str(text):
        if values[0] < 1:
            raise ConfigError(f"--seeds {values[0]}: at least one seed")
        return tuple(range(first, first + values[0]))
    if not values or len(set(values)) != len(values):
        raise ConfigError(f"--seeds {text!r}: give distinct seeds")
    return tuple(values)


@dataclass
class AblationConfig:
    out: Path  # <out>/<variant>/seed-<n>/ per run, and ablation.json / .md / .png
    data: Path | None = None  # a tiles data set; None = generate the synthetic one under out/data
    data_seed: int = 0
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3  # from scratch, a miniature model needs more than the paper's fine-tuning 6e-5
    warmup_epochs: float = 0.5
    augment: bool = True
    seeds: tuple[int, ...] = (0,)  # training seeds; the data stays the same
    workers: int = 1
    device: str = "auto"
    variants: list[str] | None = None  # keys of VARIANTS to run; None = all
    progress: bool = False


@dataclass
class AblationRun:
    """One variant trained with one seed, scored on the test split (fractions in [0, 1])."""

    variant: str
    seed: int
    metrics: dict[str, float]  # METRICS and "IoU <context class>"
    val_miou: float
    train_seconds: float
    checkpoint: str


@dataclass
class Spread:
    """One metric of one variant over its seeds; ``std`` None with a single seed."""

    mean: float
    std: float | None
    min: float
    max: float
    values: list[float]

    @classmethod
    def of(cls, values: list[float]) -> "Spread":
        """An undefined score (NaN) in any seed makes every figure NaN: it is not averaged away."""
        x = np.asarray(values, dtype=np.float64)
        std = float(x.std(ddof=1)) if len(x) > 1 else None
        return cls(float(x.mean()), std, float(x.min()), float(x.max()), [float(v) for v in x])

    def text(self) -> str:
        """``"77.8 ± 1.2"`` in percent (``"77.8"`` for one seed, ``"n/a"`` when undefined)."""
        if math.isnan(self.mean):
            return "n/a"
        return f"{100 * self.mean:.1f}" + ("" if self.std is None else f" ± {100 * self.std:.1f}")


@dataclass
class AblationRow:
    """One variant over all seeds."""

    variant: str
    label: str
    model: str
    fusion_stages: str
    gate: bool
    alpha: float
    decoder: str
    seeds: list[int]
    metrics: dict[str, Spread]


@dataclass
class AblationResult:
    rows: list[AblationRow]
    runs: list[AblationRun]
    config: dict = field(default_factory=dict)

    def columns(self) -> list[str]:
        return list(self.rows[0].metrics) if self.rows else []

    def markdown(self) -> str:
        cols = [c for c in self.columns() if c != "OA"]
        head = ["variant", "decoder", "fusion", "gate", "alpha", *cols]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            gate = "-" if r.fusion_stages == "none" else ("on" if r.gate else "off")
            cells = [r.label, r.decoder, r.fusion_stages, gate, f"{r.alpha:g}",
                     *[r.metrics[c].text() for c in cols]]
            lines.append("| " + " | ".join(cells) + " |")
        seeds = self.rows[0].seeds if self.rows else []
        note = f"\nTest split, percent: mean ± {SPREAD}, seeds {', '.join(map(str, seeds))}." if len(seeds) > 1 else (
            f"\nTest split, percent, seed {seeds[0]}." if seeds else "")
        return "\n".join(lines) + "\n" + note + "\n"

    def context_gains(self) -> dict[str, dict[str, float]]:
        """Per decoder run with both rows: CASWiT's mean minus the single stream's, per metric (fractions)."""
        rows = {r.variant: r for r in self.rows}
        gains = {}
        for decoder, (single, caswit) in CONTEXT_PAIRS.items():
            if single in rows and caswit in rows:
                a, b = rows[single].metrics, rows[caswit].metrics
                gains[decoder] = {name: b[name].mean - a[name].mean for name in a if name in b}
        return gains

    def to_json(self) -> dict:
        """JSON-ready (an undefined score, NaN, becomes null)."""
        return json_ready({"config": self.config, "spread": SPREAD, "context_gains": self.context_gains(),
                        "rows": [asdict(r) for r in self.rows], "runs": [asdict(r) for r in self.runs]})


def aggregate(runs: list[AblationRun], variants: tuple[Variant, ...] = VARIANTS) -> list[AblationRow]:
    """One row per variant (in ``variants`` order): each metric's mean and spread over its seeds."""
    rows = []
    for v in variants:
        mine = [r for r in runs if r.variant == v.key]
        if not mine:
            continue
        names = list(mine[0].metrics)
        metrics = {name: Spread.of([r.metrics[name] for r in mine]) for name in names}
        rows.append(AblationRow(v.key, v.label, v.model, v.fusion_stages or "none", bool(v.gate), v.alpha,
                                v.decoder, [r.seed for r in mine], metrics))
    return rows


def selected_variants(keys: list[str] | None) -> tuple[Variant, ...]:
    if not keys:
        return VARIANTS
    known = {v.key for v in VARIANTS}
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise ConfigError(f"unknown ablation variant {unknown[0]!r}: use {', '.join(sorted(known))}")
    return tuple(v for v in VARIANTS if v.key in keys)


def run_ablation(config: AblationConfig, report: Callable[[str], None] | None = None) -> AblationResult:
    """Train and score every (variant, seed); write ablation.json, ablation.md and ablation.png under ``out``.

    ``report``: called with one line after each run (progress of a long job).
    """
    variants = selected_variants(config.variants)
    seeds = tuple(config.seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct and at least one, got {list(seeds)}")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    data = _data(config, out)
    runs = []
    total = len(variants) * len(seeds)
    for v in variants:
        for seed in seeds:
            run = _train_and_score(config, v, seed, data, out / v.key / f"seed-{seed}")
            runs.append(run)
            if report is not None:
                report(f"[{len(runs)}/{total}] {v.label}, {v.decoder}, alpha {v.alpha:g}, seed {seed}: "
                       f"mIoU {100 * run.metrics['mIoU']:.1f} "
                       f"({run.train_seconds:.0f} s)")
    result = AblationResult(aggregate(runs, variants), runs,
                            config={k: str(v) for k, v in asdict(config).items()})
    write_json(out / "ablation.json", result.to_json())
    write_text(out / "ablation.md", result.markdown())
    plot_ablation(result, out / "ablation.png")
    return result


def _data(config: AblationConfig, out: Path) -> Path:
    if config.data is not None:
        return Path(config.data)
    data = out / "data"
    if not (data / "classes.json").is_file():
        generate_dataset(SyntheticConfig(seed=config.data_seed), data, overwrite=False)
    return data


def _train_and_score(config: AblationConfig, v: Variant, seed: int, data: Path, run_dir: Path) -> AblationRun:
    t0 = time.perf_counter()
    res = train(
        TrainConfig(
            dataset="tiles", root=data, model=v.model, fusion_stages=v.fusion_stages, gate=v.gate, alpha=v.alpha,
            decoder=v.decoder,
            epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
            warmup_epochs=config.warmup_epochs, augment=config.augment, seed=seed,
            workers=config.workers, device=config.device, out=run_dir, overwrite=True,
            progress=config.progress, command=f"ablation: {v.label}, {v.decoder}, seed {seed}",
        )
    )
    seconds = time.perf_counter() - t0
    ev = evaluate(
        EvalConfig(dataset="tiles", root=data, weights=res.best_checkpoint, split="test",
                   workers=config.workers, device=config.device, out_dir=run_dir / "eval",
                   overwrite=True, progress=config.progress)
    )
    by_id = {row["id"]: row for row in ev.per_class}
    metrics = {name: ev.metrics[name] for name in METRICS}
    metrics.update({f"IoU {by_id[c]['name']}": by_id[c]["iou"] for c in CONTEXT_CLASSES})
    metrics = {k: (math.nan if v is None else float(v)) for k, v in metrics.items()}
    return AblationRun(v.key, seed, metrics, res.best_metrics.get("mIoU", math.nan), seconds,
                       str(res.best_checkpoint))


def plot_ablation(result: AblationResult, path: Path) -> Path:
    """Bars of the mean per variant and metric, whiskers of one std, a dot per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in result.columns() if c != "OA"]
    rows = result.rows
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 0.45 * len(rows) + 1.6), sharey=True,
                             constrained_layout=True)
    axes = [axes] if len(cols) == 1 else list(axes)
    ys = list(range(len(rows)))[::-1]
    for ax, col in zip(axes, cols):
        means = [100 * r.metrics[col].mean for r in rows]
        errs = [0.0 if r.metrics[col].std is None else 100 * r.metrics[col].std for r in rows]
        ax.barh(ys, means, xerr=errs, color="#9ecae1", edgecolor="#3182bd", capsize=3)
        for y, r in zip(ys, rows):
            ax.plot([100 * v for v in r.metrics[col].values], [y] * len(r.metrics[col].values), "k.", ms=4)
        ax.set_title(col)
        ax.set_xlim(0, 100)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(ys, [f"{r.label}, {r.decoder}, α {r.alpha:g}" for r in rows])
    seeds = rows[0].seeds if rows else []
    fig.suptitle(f"Context ablation, test split, {len(seeds)} seed(s): mean"
                 + (" ± std (ddof 1), dots = seeds" if len(seeds) > 1 else ""))
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
    return path
