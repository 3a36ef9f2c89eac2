"""The context ablation of the paper's Table 3, on the synthetic mosaics.

Five variants of the miniature model, trained with the same data, budget and
seed, then scored on the test split: the single-stream baseline (no LR
branch), fusion after stage 1 only, after stage 4 only, after all stages,
and all stages with the gate. The synthetic data has two classes (park,
meadow) that only the context decides, so their IoU shows what the LR branch
brings; the other classes show it costs nothing where the HR tile decides.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import write_text
from ..synthetic import CONTEXT_CLASSES, SyntheticConfig, generate_dataset
from .evaluate import EvalConfig, evaluate
from .train import TrainConfig, train

# (label, named model, fusion stages, gate)
VARIANTS: list[tuple[str, str, str | None, bool | None]] = [
    ("single-stream (no context)", "swin-nano-upernet", None, None),
    ("stage 1 only", "caswit-nano", "1", False),
    ("stage 4 only", "caswit-nano", "4", False),
    ("all stages", "caswit-nano", "all", False),
    ("all stages + gate", "caswit-nano", "all", True),
]


@dataclass
class AblationConfig:
    out: Path  # one run directory per variant below it, and ablation.json / ablation.md
    data: Path | None = None  # a tiles data set; None = generate the synthetic one under out/data
    data_seed: int = 0
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3  # from scratch, a miniature model needs more than the paper's fine-tuning 6e-5
    warmup_epochs: float = 0.5
    augment: bool = True
    seed: int = 0
    workers: int = 1
    device: str = "auto"
    variants: list[str] | None = None  # labels to run; None = all
    progress: bool = False


@dataclass
class AblationRow:
    variant: str
    model: str
    fusion_stages: str
    gate: bool
    miou: float
    mf1: float
    mbiou: float
    oa: float
    context_iou: dict[str, float]  # context-decided classes
    val_miou: float
    train_seconds: float
    checkpoint: str


@dataclass
class AblationResult:
    rows: list[AblationRow]
    config: dict = field(default_factory=dict)

    def best_all_stage(self) -> AblationRow:
        """The all-stage variant with the best *validation* mIoU (the test split stays unseen)."""
        rows = [r for r in self.rows if r.fusion_stages == "1,2,3,4"]
        return max(rows, key=lambda r: r.val_miou)

    def markdown(self) -> str:
        ctx = list(self.rows[0].context_iou) if self.rows else []
        head = ["variant", "mIoU", "mF1", "mBIoU", *[f"IoU {c}" for c in ctx]]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            vals = [r.miou, r.mf1, r.mbiou, *[r.context_iou[c] for c in ctx]]
            lines.append(f"| {r.variant} | " + " | ".join(f"{100 * v:.1f}" for v in vals) + " |")
        return "\n".join(lines) + "\n"


def run_ablation(config: AblationConfig) -> AblationResult:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    data = config.data
    if data is None:
        data = out / "data"
        if not (data / "classes.json").is_file():
            generate_dataset(SyntheticConfig(seed=config.data_seed), data, overwrite=False)
    rows = []
    for label, model, stages, gate in VARIANTS:
        if config.variants and label not in config.variants:
            continue
        run_dir = out / re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
        t0 = time.perf_counter()
        res = train(
            TrainConfig(
                dataset="tiles", root=Path(data), model=model, fusion_stages=stages, gate=gate,
                epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                warmup_epochs=config.warmup_epochs, augment=config.augment, seed=config.seed,
                workers=config.workers, device=config.device, out=run_dir, overwrite=True,
                progress=config.progress, command=f"ablation: {label}",
            )
        )
        seconds = time.perf_counter() - t0
        ev = evaluate(
            EvalConfig(dataset="tiles", root=Path(data), weights=res.best_checkpoint, split="test",
                       workers=config.workers, device=config.device, out_dir=run_dir / "eval",
                       overwrite=True, progress=config.progress)
        )
        by_id = {row["id"]: row for row in ev.per_class}
        m = ev.metrics
        cfg = res.model.config
        rows.append(
            AblationRow(
                variant=label, model=model,
                fusion_stages=",".join(map(str, cfg.fusion_stages)) or "none", gate=cfg.gate,
                miou=m["mIoU"], mf1=m["mF1"], mbiou=m["mBIoU"], oa=m["OA"],
                context_iou={by_id[c]["name"]: by_id[c]["iou"] for c in CONTEXT_CLASSES},
                val_miou=res.best_metrics.get("mIoU", float("nan")),
                train_seconds=seconds, checkpoint=str(res.best_checkpoint),
            )
        )
    result = AblationResult(rows, config={k: str(v) for k, v in asdict(config).items()})
    write_text(out / "ablation.json", json.dumps({"config": result.config, "rows": [asdict(r) for r in rows]},
                                                 indent=2) + "\n")
    write_text(out / "ablation.md", result.markdown())
    return result
