"""Forward time per component of CASWiT in fp32 and bf16 on this CPU, against its matmul peak.

    python benchmarks/model_speed.py [--models caswit-tiny caswit-nano] [--tile 512] [--batch 1]
                                     [--repeats 3] [--threads 1] [--compile]

Per model, five ways of running the same weights on the same random tile,
measured side by side (interleaved, best of ``repeats``; other load on the
machine only ever slows a run down):

* ``fp32 before``: the model as built, fp32: what predict ran before;
* ``fp32``: as predict runs fp32 now (``prepare_inference``: Swin window
  attention through SDPA);
* ``fp32 NHWC``: the same with the decoder in channels_last (a trial, dropped);
* ``bf16 as built``: bf16 autocast on the model as built;
* ``bf16``: as predict runs bf16 (fused window attention, decoder channels_last).

Printed: time per component (HR and LR encoders, fusion per stage,
decoder), FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode``
(the CPU flash-attention kernel included), achieved FLOP/s against this
machine's matmul peak in each precision (measured between the rounds,
best of all), peak RSS, and the pixel agreement of the class maps.
Targets for caswit-tiny at 512 px: bf16 >= 3x fp32 before end to end, and
>= 50 % of the bf16 matmul peak. ``--compile`` adds ``torch.compile`` of
the bf16 model: compile time, time per tile and the tiles it takes to pay
for itself.

Each model runs in its own subprocess so peak-memory figures do not mix.
One thread by default: ratios are then comparable on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from collections import defaultdict

MODES = ("fp32 before", "fp32", "fp32 NHWC", "bf16 as built", "bf16")


def matmul_peak(dtype, n: int = 2048, repeats: int = 3) -> float:
    """Best FLOP/s of an n x n x n matmul in ``dtype`` (the matrix units' practical peak)."""
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def component_labels(model) -> list[tuple[object, str]]:
    """(module, label) for the parts we time: encoders (embedding and stages), fusion per stage, decoder."""
    b = model.backbone
    parts = []
    for encoder, label in ((b.hr_encoder, "hr_encoder"), (b.lr_encoder, "lr_encoder")):
        if encoder is not None:  # called stage by stage, never as a whole: time its parts
            parts += [(encoder.patch_embed, label)] + [(layer, label) for layer in encoder.layers]
    parts += [(block, f"fusion.stage{s}") for s, block in b.fusion.items()]
    return parts + [(model.decoder, "decoder")]


def count_flops(model, hr, lr) -> dict[str, float]:
    """FLOPs per component label, of the fusion attention, and in total (one fp32 forward)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_flash(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs):  # not in torch's table
        return sdpa_flop_count(q_shape, k_shape, v_shape)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash}
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(hr, lr)
    counts = counter.get_flop_counts()
    names = {m: n for n, m in model.named_modules()}
    out = defaultdict(float, total=counter.get_total_flops())
    for module, label in component_labels(model):
        out[label] += sum(counts.get(f"{type(model).__name__}.{names[module]}", {}).values())
    out["attention"] = sum(v for op, v in counts.get("Global", {}).items() if "attention" in str(op))
    return dict(out)


def measure(name: str, tile: int, batch: int, repeats: int, threads: int, with_compile: bool) -> dict:
    import copy

    import torch

    import caswit_geo
    from caswit_geo.runtime.precision import Precision, detect_cpu_features, prepare_inference

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    fp32, bf16 = Precision("fp32", "cpu", "benchmark"), Precision("bf16", "cpu", "benchmark")
    built = caswit_geo.build_model(name, num_classes=19, img_size=tile).eval()
    for_fp32 = prepare_inference(copy.deepcopy(built), fp32)
    for_bf16 = prepare_inference(copy.deepcopy(built), bf16)  # and its decoder in channels_last
    hr, lr = torch.randn(batch, 3, tile, tile), torch.randn(batch, 3, tile, tile)
    flops = count_flops(built, hr, lr)
    runs = {"fp32 before": (built, fp32), "fp32": (for_fp32, fp32), "fp32 NHWC": (for_bf16, fp32),
            "bf16 as built": (built, bf16), "bf16": (for_bf16, bf16)}

    plain = copy.deepcopy(for_bf16) if with_compile else None  # compiled without the timing hooks below
    parts: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    state = {"mode": None, "starts": {}}
    for model in (built, for_fp32, for_bf16):
        for module, label in component_labels(model):
            module.register_forward_pre_hook(
                lambda m, a, label=label: state["starts"].__setitem__(label, time.perf_counter()))
            module.register_forward_hook(lambda m, a, o, label=label: parts[state["mode"]].__setitem__(
                label, parts[state["mode"]][label] + time.perf_counter() - state["starts"][label]))

    def forward(mode: str):
        model, precision = runs[mode]
        state["mode"] = mode
        with torch.inference_mode(), precision.autocast():
            return model(hr, lr)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    classes = {mode: forward(mode).argmax(1) for mode in MODES}  # also the warm-up
    t0 = time.perf_counter()
    forward("fp32")
    inner = max(1, math.ceil(0.25 / (time.perf_counter() - t0)))  # small models: average several forwards
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    best_parts: dict[str, dict[str, float]] = {}
    peaks = {"fp32": 0.0, "bf16": 0.0}
    for _ in range(repeats):
        for dtype, key in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            peaks[key] = max(peaks[key], matmul_peak(dtype))
        for mode in MODES:
            parts[mode].clear()
            t0 = time.perf_counter()
            for _ in range(inner):
                forward(mode)
            elapsed = (time.perf_counter() - t0) / inner
            if not times[mode] or elapsed < min(times[mode]):
                best_parts[mode] = {k: v / inner for k, v in parts[mode].items()}
            times[mode].append(elapsed)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    result = {
        "model": name, "tile": tile, "batch": batch, "threads": threads,
        "cpu": detect_cpu_features().bf16_name(),
        "params_m": built.parameter_counts()["inference_total"] / 1e6,
        "peaks": peaks,
        "flops": flops,
        "seconds": {mode: min(t) for mode, t in times.items()},
        "median_seconds": {mode: sorted(t)[len(t) // 2] for mode, t in times.items()},
        "parts": best_parts,
        "agreement": {
            "fp32 vs fp32 before": float((classes["fp32"] == classes["fp32 before"]).float().mean()),
            "fp32 NHWC vs fp32": float((classes["fp32 NHWC"] == classes["fp32"]).float().mean()),
            "bf16 vs bf16 as built": float((classes["bf16"] == classes["bf16 as built"]).float().mean()),
            "bf16 vs fp32 before": float((classes["bf16"] == classes["fp32 before"]).float().mean()),
        },
        "peak_rss_mb": rss1 / 1024,
        "forward_peak_growth_mb": (rss1 - rss0) / 1024,
    }
    if with_compile:
        compiled = torch.compile(plain)
        runs["bf16 compiled"] = (compiled, bf16)
        t0 = time.perf_counter()
        out = forward("bf16 compiled")
        result["compile_seconds"] = time.perf_counter() - t0
        result["agreement"]["compiled vs bf16"] = float((out.argmax(1) == classes["bf16"]).float().mean())
        result["compiled_finite"] = bool(torch.isfinite(out).all())
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            forward("bf16 compiled")
            best = min(best, time.perf_counter() - t0)
        result["seconds"]["bf16 compiled"] = best
    return result


def report(r: dict) -> None:
    s, f, peaks = r["seconds"], r["flops"], r["peaks"]
    per = r["batch"]
    print(f"\n{r['model']}: {r['params_m']:.1f}M params, tile {r['tile']}, batch {per}, {r['threads']} thread(s), "
          f"CPU {r['cpu']}; {f['total'] / 1e9 / per:.1f} GFLOP per tile ({f['attention'] / 1e9 / per:.1f} in "
          "fusion attention)")
    print(f"  {'component':<16}{'GFLOP':>8}" + "".join(f"{m + ' s':>16}" for m in MODES)
          + f"{'bf16 speed-up':>15}{'bf16 GFLOP/s':>14}")
    labels = list(dict.fromkeys(k for p in r["parts"].values() for k in p))  # in forward order
    for label in labels + ["total"]:
        t = {m: (s[m] if label == "total" else r["parts"][m].get(label, 0.0)) for m in MODES}
        gf = f.get(label, 0.0) / 1e9
        speed = t["fp32 before"] / t["bf16"] if t["bf16"] else float("nan")
        rate = gf / t["bf16"] if t["bf16"] else float("nan")
        print(f"  {label:<16}{gf:>8.1f}" + "".join(f"{t[m]:>16.3f}" for m in MODES) + f"{speed:>14.2f}x{rate:>14.0f}")
    fp32_rate, bf16_rate = f["total"] / s["fp32"], f["total"] / s["bf16"]  # as predict runs them now
    print(f"  end to end: bf16 {s['fp32 before'] / s['bf16']:.2f}x over fp32 before (target >= 3x), fp32 now "
          f"{s['fp32 before'] / s['fp32']:.2f}x over before, bf16 {s['bf16 as built'] / s['bf16']:.2f}x over bf16 as "
          f"built; decoder channels_last in fp32: {s['fp32'] / s['fp32 NHWC']:.2f}x (dropped)")
    print(f"  matmul peak, {r['threads']} thread(s): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    print(f"  achieved: bf16 {bf16_rate / 1e9:.0f} GFLOP/s = {100 * bf16_rate / peaks['bf16']:.0f} % of the bf16 "
          f"matmul peak (target >= 50 %); fp32 {fp32_rate / 1e9:.0f} GFLOP/s = "
          f"{100 * fp32_rate / peaks['fp32']:.0f} % of the fp32 peak")
    med = r["median_seconds"]
    print(f"  medians: " + ", ".join(f"{m} {med[m]:.3f} s" for m in MODES))
    a = r["agreement"]
    print(f"  class maps (random weights), % of pixels equal: fp32 = fp32 before {100 * a['fp32 vs fp32 before']:.2f}, "
          f"fp32 NHWC = fp32 {100 * a['fp32 NHWC vs fp32']:.2f}, bf16 = bf16 as built "
          f"{100 * a['bf16 vs bf16 as built']:.2f}, bf16 = fp32 before {100 * a['bf16 vs fp32 before']:.2f}")
    print(f"  peak RSS {r['peak_rss_mb']:.0f} MB (+{r['forward_peak_growth_mb']:.0f} MB over the built model)")
    if "compile_seconds" in r:
        gain = s["bf16"] - s["bf16 compiled"]
        tiles = r["compile_seconds"] / (gain / per) if gain > 0 else float("inf")
        mosaic = (4096 // r["tile"]) ** 2
        print(f"  torch.compile (bf16): {r['compile_seconds']:.0f} s to compile, {s['bf16 compiled'] / per:.3f} s per "
              f"tile vs {s['bf16'] / per:.3f} s; pays after {tiles:.0f} tiles (a 4096 x 4096 mosaic has {mosaic}); "
              f"maps agree on {100 * a['compiled vs bf16']:.2f} %"
              + ("" if r["compiled_finite"] else ", NON-FINITE outputs"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["caswit-tiny", "caswit-nano"])
    p.add_argument("--tile", type=int, default=None, help="tile size (default: each model's own)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the bf16 model (slow)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(measure(a.child, a.tile, a.batch, a.repeats, a.threads, a.compile)))
        return
    from caswit_geo.model.configs import get_config

    def child(*args: str) -> dict:
        cmd = [sys.executable, __file__, *args, "--threads", str(a.threads)]
        return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)

    for name in a.models:
        tile = a.tile or get_config(name, num_classes=1).img_size
        args = ["--child", name, "--tile", str(tile), "--batch", str(a.batch), "--repeats", str(a.repeats)]
        report(child(*args, *(["--compile"] if a.compile else [])))


if __name__ == "__main__":
    main()
