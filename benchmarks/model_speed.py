"""Forward time of CASWiT on this CPU with each decoder, per component, in fp32 and bf16.

    python benchmarks/model_speed.py [--models caswit-tiny caswit-base] [--decoders upernet segformer]
                                     [--modes fp32 bf16] [--tile 512] [--batch 1] [--repeats 3]
                                     [--threads 1] [--compile]

Per model, the UPerNet and the SegFormer decoder on the same encoders (the
same weights) and the same random tile, measured side by side: every
repeat runs each (decoder, mode) in turn and the best repeat counts, so
other load on the machine slows every row alike. Modes are ways of running
the same weights:

* ``fp32``: as predict runs fp32 (``prepare_inference``: Swin window
  attention through SDPA);
* ``bf16``: as predict runs bf16 (the same, decoder in channels_last);
  measured by default only where the CPU computes bf16 natively;
* ``fp32 before``, ``fp32 NHWC``, ``bf16 as built``: the model as built in
  fp32, the fp32 decoder in channels_last, bf16 on the model as built
  (trials of the precision work, on request with ``--modes``).

Printed per row: decoder time, whole-model time, the decoder's share,
GFLOP of the decoder and of the model (``torch.utils.flop_counter``, the
CPU flash-attention kernel included), peak resident memory during the
forward pass (the process high-water mark, reset before each pass; the
process holds the models of every row) and its growth over the memory
resident before the pass, and the time of every component (HR and LR encoders, fusion per stage, decoder). For
SegFormer also its textbook form (what training runs) on the same stage
maps: time, GFLOP, and how far its logits are from the folded form's.
Above the figures: the CPU model and its bf16 / AMX flags, the matmul
peak in each precision (best of all repeats) and the FLOP/s achieved.
Goals for caswit-tiny at 512 px in fp32: SegFormer's whole model in
<= 0.5x UPerNet's time, and its decoder <= 5 % of it. ``--compile`` adds
``torch.compile`` of each bf16 model: compile time, time per tile and the
tiles it takes to pay for itself.

Each model runs in its own subprocess. One thread by default: ratios are
then comparable on a shared machine.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

MODES = ("fp32 before", "fp32", "fp32 NHWC", "bf16 as built", "bf16")
DECODERS = ("upernet", "segformer")
CPU_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")


def cpu_description() -> dict:
    """CPU model, core count, the flags that decide bf16, and torch's own verdict."""
    import os

    from caswit_geo.runtime.precision import detect_cpu_features

    name, flags = "unknown CPU", set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")[:1_000_000]
        name = next((line.partition(":")[2].strip() for line in text.splitlines() if line.startswith("model name")),
                    name)
        flags = next((set(line.partition(":")[2].split()) for line in text.splitlines()
                      if line.startswith(("flags", "Features"))), set())
    except OSError:
        pass
    features = detect_cpu_features()
    return {"name": name, "cores": os.cpu_count(), "flags": {f: f in flags for f in CPU_FLAGS},
            "bf16": features.bf16_name(), "native_bf16": features.bf16}


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


def count_flops(fn, names: dict | None = None, prefix: str = "") -> tuple[float, dict[str, float]]:
    """Total FLOPs of ``fn()`` and per module name (``names``: module -> label, for the counter's keys)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_flash(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs):  # not in torch's table
        return sdpa_flop_count(q_shape, k_shape, v_shape)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash}
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    counts = counter.get_flop_counts()
    per = defaultdict(float)
    for key, label in (names or {}).items():
        per[label] += sum(counts.get(f"{prefix}{key}", {}).values())
    return counter.get_total_flops(), dict(per)


class PeakMemory:
    """Peak resident memory of a block: the kernel's high-water mark, reset before it (Linux)."""

    def __init__(self) -> None:
        self.resettable = self._reset()

    @staticmethod
    def _status(key: str) -> int:
        text = Path("/proc/self/status").read_text()
        return int(re.search(rf"{key}:\s+(\d+)", text).group(1)) * 1024

    @staticmethod
    def _reset() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            return True
        except OSError:
            return False

    def __enter__(self):
        try:  # give back what earlier passes left in the heap, so that it does not hide this one's growth
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self.start = self._status("VmRSS") if self._reset() else None
        return self

    def __exit__(self, *exc) -> None:
        self.peak = self._status("VmHWM") if self.start is not None else None


def measure(name: str, tile: int, batch: int, repeats: int, threads: int, modes: list[str], decoders: list[str],
            with_compile: bool) -> dict:
    import copy

    import torch

    import caswit_geo
    from caswit_geo.runtime.precision import Precision, prepare_inference

    torch.set_num_threads(threads)
    precisions = {m: Precision("bf16" if m.startswith("bf16") else "fp32", "cpu", "benchmark") for m in MODES}
    hr, lr = torch.randn(batch, 3, tile, tile), torch.randn(batch, 3, tile, tile)

    built, runs = {}, {}
    for decoder in decoders:
        torch.manual_seed(0)
        model = caswit_geo.build_model(name, num_classes=19, img_size=tile, decoder=decoder).eval()
        if built:  # the same encoders and fusion blocks for every decoder
            model.backbone.load_state_dict(next(iter(built.values())).backbone.state_dict())
        built[decoder] = model
        for_fp32 = prepare_inference(copy.deepcopy(model), precisions["fp32"])
        for_bf16 = prepare_inference(copy.deepcopy(model), precisions["bf16"])  # decoder in channels_last
        ways = {"fp32 before": model, "fp32": for_fp32, "fp32 NHWC": for_bf16, "bf16 as built": model,
                "bf16": for_bf16}
        for mode in modes:
            runs[decoder, mode] = ways[mode]

    parts: dict[tuple, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    state = {"run": None, "starts": {}}
    stage_maps = {}
    for model in {id(m): m for m in runs.values()}.values():
        for module, label in component_labels(model):
            module.register_forward_pre_hook(
                lambda m, a, label=label: state["starts"].__setitem__(label, time.perf_counter()))
            module.register_forward_hook(lambda m, a, o, label=label: parts[state["run"]].__setitem__(
                label, parts[state["run"]][label] + time.perf_counter() - state["starts"][label]))
        model.decoder.register_forward_pre_hook(lambda m, a: stage_maps.__setitem__(state["run"], a[0]))

    def forward(key):
        state["run"] = key
        with torch.inference_mode(), precisions[key[1]].autocast():
            return runs[key](hr, lr)

    def textbook(key):
        """SegFormer's decoder as training runs it, on the stage maps of the last forward of ``key``."""
        decoder = runs[key].decoder
        with torch.inference_mode(), precisions[key[1]].autocast():
            return decoder.forward_textbook(stage_maps[key])

    logits = {key: forward(key) for key in runs}  # also the warm-up (and the folded weights, computed once)
    keys = list(runs)
    text_keys = [k for k in keys if k[0] == "segformer"]
    folded_vs_textbook = {}
    for key in text_keys:
        with torch.inference_mode():
            forward(key)
            a, b = runs[key].decoder(stage_maps[key]).float(), textbook(key).float()
        folded_vs_textbook[key[1]] = float((a - b).abs().max() / b.abs().max())

    flops = {}
    for decoder, model in built.items():
        if hasattr(model.decoder, "folded_weights"):
            model.decoder.folded_weights()  # once per model, not per tile: not counted
        names = {n: label for m, label in component_labels(model) for n, mm in model.named_modules() if mm is m}
        total, per = count_flops(lambda: model(hr, lr), names, f"{type(model).__name__}.")
        flops[decoder] = {"total": total, **per}
        if decoder == "segformer":
            maps = stage_maps.get(("segformer", modes[0]))
            flops["segformer textbook"] = {"decoder": count_flops(lambda: model.decoder.forward_textbook(maps))[0]}

    t0 = time.perf_counter()
    forward(keys[0])
    inner = max(1, math.ceil(0.25 / (time.perf_counter() - t0)))  # small models: average several forwards
    times: dict = {k: [] for k in keys}
    text_times: dict = {k: [] for k in text_keys}
    best_parts: dict = {}
    memory: dict = {k: {"peak": 0, "growth": 0} for k in keys}
    peaks = {"fp32": 0.0, "bf16": 0.0}
    for _ in range(repeats):
        for dtype, p in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            if any(m.startswith(p) for m in modes):
                peaks[p] = max(peaks[p], matmul_peak(dtype))
        for key in keys:
            parts[key].clear()
            with PeakMemory() as mem:
                t0 = time.perf_counter()
                for _ in range(inner):
                    forward(key)
                elapsed = (time.perf_counter() - t0) / inner
            if mem.peak is not None:
                memory[key] = {"peak": max(memory[key]["peak"], mem.peak),
                               "growth": max(memory[key]["growth"], mem.peak - mem.start)}
            if not times[key] or elapsed < min(times[key]):
                best_parts[key] = {k: v / inner for k, v in parts[key].items()}
            times[key].append(elapsed)
            if key in text_times:
                t0 = time.perf_counter()
                for _ in range(inner):
                    textbook(key)
                text_times[key].append((time.perf_counter() - t0) / inner)

    label = lambda key: f"{key[0]} | {key[1]}"  # noqa: E731
    result = {
        "model": name, "tile": tile, "batch": batch, "threads": threads, "modes": modes, "decoders": decoders,
        "params_m": {d: m.parameter_counts()["inference_total"] / 1e6 for d, m in built.items()},
        "decoder_params_m": {d: m.parameter_counts()["decoder"] / 1e6 for d, m in built.items()},
        "peaks": peaks,
        "flops": flops,
        "seconds": {label(k): min(t) for k, t in times.items()},
        "median_seconds": {label(k): sorted(t)[len(t) // 2] for k, t in times.items()},
        "parts": {label(k): v for k, v in best_parts.items()},
        "textbook_decoder_seconds": {label(k): min(t) for k, t in text_times.items()},
        "folded_vs_textbook": folded_vs_textbook,
        "memory_mb": {label(k): {n: v / 2**20 for n, v in m.items()} for k, m in memory.items()}
        if PeakMemory().resettable else None,
        "agreement": {label(k): float((logits[k].argmax(1) == logits[(k[0], modes[0])].argmax(1)).float().mean())
                      for k in keys},
    }
    if with_compile:
        result["compiled"] = {}
        for decoder in decoders:
            model = prepare_inference(copy.deepcopy(built[decoder]), precisions["bf16"])
            compiled = torch.compile(model)
            t0 = time.perf_counter()
            with torch.inference_mode(), precisions["bf16"].autocast():
                out = compiled(hr, lr)
            compile_s = time.perf_counter() - t0
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                with torch.inference_mode(), precisions["bf16"].autocast():
                    compiled(hr, lr)
                best = min(best, time.perf_counter() - t0)
            result["compiled"][decoder] = {"compile_seconds": compile_s, "seconds": best,
                                           "finite": bool(torch.isfinite(out).all())}
    return result


def report(r: dict, cpu: dict) -> None:
    s, f, per = r["seconds"], r["flops"], r["batch"]
    memory = r["memory_mb"]
    print(f"\n{r['model']}, tile {r['tile']}, batch {per}, {r['threads']} thread(s); parameters (inference): "
          + ", ".join(f"{d} {r['params_m'][d]:.1f}M (decoder {r['decoder_params_m'][d]:.2f}M)" for d in r["decoders"]))
    head = (f"  {'decoder':<20}{'precision':<14}{'decoder s':>10}{'model s':>9}{'decoder %':>10}"
            f"{'dec. GFLOP':>11}{'GFLOP':>8}{'GFLOP/s':>9}{'peak MB':>9}{'+MB':>7}{'maps =':>8}")
    print(head)
    for decoder in r["decoders"]:
        for mode in r["modes"]:
            key = f"{decoder} | {mode}"
            dec = r["parts"][key].get("decoder", float("nan"))
            mem = memory[key] if memory else {"peak": float("nan"), "growth": float("nan")}
            print(f"  {decoder:<20}{mode:<14}{dec:>10.3f}{s[key]:>9.3f}{100 * dec / s[key]:>9.1f}%"
                  f"{f[decoder]['decoder'] / 1e9 / per:>11.2f}{f[decoder]['total'] / 1e9 / per:>8.1f}"
                  f"{f[decoder]['total'] / s[key] / 1e9:>9.0f}{mem['peak']:>9.0f}{mem['growth']:>7.0f}"
                  f"{100 * r['agreement'][key]:>7.2f}%")
        if decoder == "segformer":
            for mode in r["modes"]:
                t = r["textbook_decoder_seconds"][f"segformer | {mode}"]
                print(f"  {'  textbook form':<20}{mode:<14}{t:>10.3f}{'':>9}{'':>10}"
                      f"{f['segformer textbook']['decoder'] / 1e9 / per:>11.2f}"
                      f"   (training's form; max |logit difference| / max |logit| with the folded form: "
                      f"{r['folded_vs_textbook'][mode]:.1e})")
    print("  decoder s: forward hooks on the decoder; model s: whole forward pass, best of the repeats; "
          "maps =: pixels whose class equals the first mode's")
    labels = list(dict.fromkeys(k for p in r["parts"].values() for k in p))
    print("  components, s:  " + "  ".join(f"{lab}" for lab in labels))
    for key, p in r["parts"].items():
        print(f"    {key:<24}" + "  ".join(f"{p.get(lab, 0.0):.3f}" for lab in labels))
    if "upernet" in r["decoders"] and "segformer" in r["decoders"]:
        for mode in r["modes"]:
            up, sf = s[f"upernet | {mode}"], s[f"segformer | {mode}"]
            share = r["parts"][f"segformer | {mode}"].get("decoder", float("nan")) / sf
            goal = " (goals <= 0.5x and <= 5 %)" if mode == "fp32" and r["model"] == "caswit-tiny" else ""
            print(f"  {mode}: SegFormer model {sf / up:.2f}x UPerNet's time ({sf:.2f} s against {up:.2f} s), "
                  f"its decoder {100 * share:.1f} % of it{goal}")
    peaks = ", ".join(f"{p} {v / 1e9:.0f} GFLOP/s" for p, v in r["peaks"].items() if v)
    print(f"  matmul peak, {r['threads']} thread(s): {peaks}")
    med = r["median_seconds"]
    print("  medians: " + ", ".join(f"{k} {v:.3f} s" for k, v in med.items()))
    for decoder, c in r.get("compiled", {}).items():
        eager = s.get(f"{decoder} | bf16")
        gain = (eager - c["seconds"]) if eager else float("nan")
        tiles = c["compile_seconds"] / (gain / per) if gain and gain > 0 else float("inf")
        print(f"  torch.compile (bf16), {decoder}: {c['compile_seconds']:.0f} s to compile, "
              f"{c['seconds'] / per:.3f} s per tile" + (f" against {eager / per:.3f} s, pays after {tiles:.0f} tiles"
                                                        if eager else "")
              + ("" if c["finite"] else ", NON-FINITE outputs"))


def describe_cpu(cpu: dict) -> str:
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu["flags"].items())
    verdict = "bf16 native" if cpu["native_bf16"] else "no native bf16: fp32 is the only fast path"
    return f"CPU: {cpu['name']} ({cpu['cores']} cores); {flags}; torch sees {cpu['bf16']} ({verdict})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["caswit-tiny", "caswit-base"])
    p.add_argument("--decoders", nargs="+", choices=DECODERS, default=list(DECODERS))
    p.add_argument("--modes", nargs="+", choices=MODES, default=None,
                   help="default: fp32, and bf16 where the CPU computes it natively")
    p.add_argument("--tile", type=int, default=None, help="tile size (default: each model's own)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the bf16 models (slow)")
    p.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(measure(a.child, a.tile, a.batch, a.repeats, a.threads, a.modes, a.decoders, a.compile)))
        return
    import torch

    from caswit_geo.model.configs import get_config

    cpu = cpu_description()
    modes = a.modes or (["fp32", "bf16"] if cpu["native_bf16"] else ["fp32"])
    print(describe_cpu(cpu))
    print(f"torch {torch.__version__}; modes {', '.join(modes)}; best of {a.repeats}, each repeat runs every row")

    results = []
    for name in a.models:
        tile = a.tile or get_config(name, num_classes=1).img_size
        cmd = [sys.executable, __file__, "--child", name, "--tile", str(tile), "--batch", str(a.batch),
               "--repeats", str(a.repeats), "--threads", str(a.threads), "--modes", *modes, "--decoders", *a.decoders]
        out = subprocess.run(cmd + (["--compile"] if a.compile else []), check=True, capture_output=True, text=True)
        results.append(json.loads(out.stdout))
        report(results[-1], cpu)
    if a.json is not None:
        a.json.write_text(json.dumps({"cpu": cpu, "results": results}, indent=2))


if __name__ == "__main__":
    main()
