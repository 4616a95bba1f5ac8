"""Reproduce the FusionMamba paper's Table 6 (cost of one forward pass) on this machine.

    python benchmarks/flops_runtime.py                       # 256x256 pair, the official code's size
    python benchmarks/flops_runtime.py --quick               # same counts, fewer timed runs
    python benchmarks/flops_runtime.py --size 480x640
    python benchmarks/flops_runtime.py --image ir.png vis.png

FLOPs are counted on the meta device (shapes only, no arithmetic) with
`fusionmamba_triton.flops.count_flops`: FLOPs = 2 x MACs for matmuls and convolutions, the
selective scan by the community formula. The paper's "FLOPs" are almost certainly MACs as thop
reports them (a module-hook counter); both are printed, plus what such a hook counter sees.
Run time: warm-up (on CUDA at least one: it JIT-compiles and autotunes the Triton kernels, and is
never timed), then the median of several batch-1 forwards, synchronising the device.
Writes a markdown table to stdout, JSON (all numbers, machine and versions) and a PNG chart.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.compared import COMPARED, IFT  # noqa: E402
from fusionmamba_triton.flops import count_flops, count_hook_macs  # noqa: E402
from fusionmamba_triton.inference import frozen  # noqa: E402
from fusionmamba_triton.model import FusionMamba  # noqa: E402
from fusionmamba_triton.ops.backends import numba_available  # noqa: E402

# Table 6 of the paper (first IR-VIS test image, RTX 3090).
PAPER = {
    "U2F": (0.20, 345.75),
    "IFCNN": (0.19, 77.94),
    "IFT": (0.36, 184.56),
    "SwinF": (0.23, 135.17),
    "FusionMamba": (0.13, 16.50),
}
SIZE_MULTIPLE = 32  # FusionMamba needs H, W multiples of 32


def log(msg: str) -> None:
    print(f"[flops_runtime {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must look like 256x256 (HxW), got {text!r}") from None
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"--size must be at least 32x32, got {text!r}")
    return h, w


def load_pair(path_a: str, path_b: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two grey images as (1, 1, H, W) in [0, 1]; colour is converted to luma (Y)."""
    from PIL import Image

    tensors = []
    for path in (path_a, path_b):
        try:
            img = Image.open(path).convert("L")
        except (OSError, ValueError) as err:
            raise SystemExit(f"cannot read image {path!r}: {err}") from None
        tensors.append(torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(1, 1, img.height, img.width))
    if tensors[0].shape != tensors[1].shape:
        raise SystemExit(f"the two images must have one size, got {tuple(tensors[0].shape[-2:])} and {tuple(tensors[1].shape[-2:])}")
    return tensors[0].float() / 255, tensors[1].float() / 255


def reflect_pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    return torch.nn.functional.pad(x, (0, -w % multiple, 0, -h % multiple), mode="reflect")


def build(name: str, size: tuple[int, int], backend: str = "torch") -> torch.nn.Module:
    if name.startswith("FusionMamba"):
        return FusionMamba.from_preset(name.split("-")[1], backend=backend)
    if name == "IFT":
        return IFT(img_size=size)
    return COMPARED[name]()


def model_size(name: str, size: tuple[int, int]) -> tuple[int, int]:
    """The input size a model actually runs at: FusionMamba reflect-pads to a multiple of 32."""
    if name.startswith("FusionMamba"):
        return tuple(math.ceil(s / SIZE_MULTIPLE) * SIZE_MULTIPLE for s in size)
    return size


def count_on_meta(name: str, size: tuple[int, int]):
    """FLOP report and hook MACs for one forward at `size`, on shapes only."""
    with torch.device("meta"):
        model = build(name, size).eval()
    x = torch.empty(1, 1, *model_size(name, size), device="meta")
    return count_flops(model, x, x), count_hook_macs(model, x, x)


def matching_square_side(name: str, target: float, size: tuple[int, int], count_at_size: float, per: str) -> int:
    """Side s of an s x s input at which the count (GMACs or GFLOPs, per `per`) equals `target` G.

    Costs grow like the pixel count, so s = sqrt(pixels * target / count); IFT's axial attention
    grows faster, so for it the estimate is refined by recounting (cheap on the meta device).
    """
    pixels = math.prod(model_size(name, size))
    side = max(32, int(round(math.sqrt(pixels * target / count_at_size))))
    for _ in range(6 if name == "IFT" else 0):
        report, _ = count_on_meta(name, (side, side))
        got = (report.total_macs if per == "macs" else report.total_flops) / 1e9
        new_side = max(32, int(round(side * math.sqrt(target / got))))
        if abs(new_side - side) <= 1:
            break
        side = new_side
    return side


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_forward(model, x1, x2, warmup: int, runs: int, device: torch.device, budget_s: float) -> dict:
    """Median of `runs` forwards after `warmup` untimed ones; fewer runs (at least 1) when they would exceed
    budget_s. The first warm-up compiles and tunes the Triton kernels, so on CUDA there is always one and
    the run count is estimated from the last warm-up, never from the first."""
    with frozen(model):  # FusionMamba's LDC weights built once, as `fusionmamba fuse` does; a no-op for the others
        return _time_forward(model, x1, x2, warmup, runs, device, budget_s)


def _time_forward(model, x1, x2, warmup, runs, device, budget_s) -> dict:
    warmup = max(warmup, 1) if device.type == "cuda" else warmup
    warm_times = []
    for _ in range(warmup):
        sync(device)
        t0 = time.perf_counter()
        model(x1, x2)
        sync(device)
        warm_times.append(time.perf_counter() - t0)
    if warm_times and warm_times[-1] * runs > budget_s:
        runs = max(1, int(budget_s // warm_times[-1]))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(runs):
        sync(device)
        t0 = time.perf_counter()
        model(x1, x2)
        sync(device)
        times.append(time.perf_counter() - t0)
    result = {"median_s": statistics.median(times), "min_s": min(times), "runs": runs, "warmup": warmup,
              "first_warmup_s": warm_times[0] if warm_times else None}
    if device.type == "cuda":
        result["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return result


def cpu_peak_rss_mib() -> float | None:
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def environment(device: torch.device) -> dict:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def write_atomically(path: str, write) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def plot(rows: list[dict], path: str, title: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart written"
    names = [r["method"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    pos = range(len(names))
    width = 0.27
    ax1.bar([p - width for p in pos], [r["gmacs"] for r in rows], width, label="ours: GMACs (full count)")
    ax1.bar(list(pos), [r["hook_gmacs"] for r in rows], width, label="ours: module-hook GMACs (thop-like)")
    ax1.bar([p + width for p in pos], [r["paper_gflops"] or 0 for r in rows], width, label="paper 'FLOPs (G)'")
    ax1.set_ylabel("G")
    ax1.set_title(f"Cost of one forward, {title}")
    ax2.bar([p - width / 2 for p in pos], [r["time_s"] or 0 for r in rows], width, label="ours (this machine)")
    ax2.bar([p + width / 2 for p in pos], [r["paper_time_s"] or 0 for r in rows], width, label="paper (RTX 3090)")
    ax2.set_ylabel("s")
    ax2.set_yscale("log")
    ax2.set_title("Run time, batch 1")
    for ax in (ax1, ax2):
        ax.set_xticks(list(pos))
        ax.set_xticklabels(names, rotation=20)
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=(256, 256), help="HxW of a random input pair (default 256x256)")
    parser.add_argument("--image", nargs=2, metavar=("A", "B"), help="a real pair instead of random inputs")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per model and backend (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timed runs per model and backend before cutting --runs (default 60 on CPU, 30 on CUDA)")
    parser.add_argument("--quick", action="store_true",
                        help="same FLOP counts at --size; time 1 run (no warm-up) of IFCNN and FusionMamba-tiny only, "
                             "at --quick-time-size")
    parser.add_argument("--quick-time-size", type=parse_size, default=None,
                        help="input size timed by --quick (default: 64x64 on CPU, where the scan is slow; --size on CUDA)")
    parser.add_argument("--no-search", action="store_true", help="skip the search for the sizes matching the paper")
    parser.add_argument("--backends", default=None,
                        help="comma-separated FusionMamba backends to time (default: triton,torch on CUDA; "
                             "numba,torch on CPU, numba being what 'auto' picks there)")
    parser.add_argument("--out-dir", default="bench_out")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    if device.type == "cuda":
        backends = ["triton", "torch"]
    else:
        backends = ["numba", "torch"] if numba_available() else ["torch"]
    if args.backends:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    runs, warmup = (1, 0) if args.quick else (args.runs, args.warmup)
    budget = args.budget if args.budget is not None else (30.0 if device.type == "cuda" else 60.0)

    if args.image:
        x1, x2 = load_pair(*args.image)
        source = f"images {args.image[0]} + {args.image[1]}"
    else:
        gen = torch.Generator().manual_seed(0)
        x1, x2 = torch.rand(1, 1, *args.size, generator=gen), torch.rand(1, 1, *args.size, generator=gen)
        source = "random pair"
    size = tuple(x1.shape[-2:])
    log(f"input {size[0]}x{size[1]} ({source}), device {device}, backends {backends}, runs {runs}, warm-up {warmup}")

    names = list(COMPARED) + ["FusionMamba-base", "FusionMamba-tiny"]
    rows, breakdowns = [], {}
    for name in names:
        log(f"{name}: counting FLOPs")
        report, hooks = count_on_meta(name, size)
        paper_time, paper_g = PAPER.get(name.split("-")[0], (None, None))
        if name == "FusionMamba-tiny":
            paper_time, paper_g = None, None  # the paper reports one FusionMamba: the default ("base") model
        row = {
            "method": name,
            "input": f"{model_size(name, size)[0]}x{model_size(name, size)[1]}",
            "gmacs": report.total_macs / 1e9,
            "gflops": report.total_flops / 1e9,
            "hook_gmacs": hooks["total"] / 1e9,
            "hook_gmacs_if_modules_called": report.hook_visible_flops / 2e9,
            "paper_gflops": paper_g,
            "paper_time_s": paper_time,
            "timings": {},
        }
        breakdowns[name] = {k: v / 2e9 for k, v in sorted(report.by_component.items(), key=lambda kv: -kv[1])}
        if paper_g and not args.no_search:
            log(f"{name}: searching the input size matching {paper_g} G")
            row["side_matching_paper_as_macs"] = matching_square_side(name, paper_g, size, row["gmacs"], "macs")
            row["side_matching_paper_as_flops"] = matching_square_side(name, paper_g, size, row["gflops"], "flops")
        timed = not args.quick or name in ("FusionMamba-tiny", "IFCNN")
        t1, t2 = (x1, x2)
        quick_size = args.quick_time_size or ((64, 64) if device.type == "cpu" else None)
        if args.quick and quick_size:
            t1, t2 = (torch.rand(1, 1, *quick_size, generator=torch.Generator().manual_seed(0)) for _ in range(2))
        row["timed_size"] = "x".join(str(v) for v in model_size(name, tuple(t1.shape[-2:])))
        for backend in backends if timed else []:
            if not name.startswith("FusionMamba") and backend != backends[-1]:
                continue  # the compared methods are plain PyTorch: time them once
            log(f"{name}: timing ({backend} backend, {warmup} warm-up + {runs} runs)")
            torch.manual_seed(0)
            model = build(name, tuple(t1.shape[-2:]), backend=backend).eval().to(device)
            a, b = (reflect_pad_to(t1, SIZE_MULTIPLE), reflect_pad_to(t2, SIZE_MULTIPLE)) if name.startswith("FusionMamba") else (t1, t2)
            row["timings"][backend] = time_forward(model, a.to(device), b.to(device), warmup, runs, device, budget)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
        fastest = min(row["timings"].values(), key=lambda t: t["median_s"], default=None)
        row["time_s"] = fastest["median_s"] if fastest else None
        row["peak_mem_mib"] = fastest.get("peak_mem_mib") if fastest else None
        rows.append(row)

    env = environment(device)
    env["cpu_peak_rss_mib_process"] = cpu_peak_rss_mib()
    print_tables(rows, breakdowns, env, size, source)

    out_json = os.path.join(args.out_dir, "flops_runtime.json")
    payload = {"environment": env, "input_size": list(size), "source": source, "quick": args.quick,
               "convention": "gmacs = multiply-adds / 1e9; gflops = 2 * gmacs (FlopCounterMode); scan by 9*B*L*D*N + B*D*L",
               "paper_table6": PAPER, "rows": rows, "breakdown_gmacs": breakdowns}
    def write_json(tmp):
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2)

    write_atomically(out_json, write_json)
    log(f"wrote {out_json}")
    message = plot(rows, os.path.join(args.out_dir, "flops_runtime.png"), f"{size[0]}x{size[1]}")
    log(message or f"wrote {os.path.join(args.out_dir, 'flops_runtime.png')}")
    return 0


def fmt(v, spec=".2f") -> str:
    return "–" if v is None else format(v, spec)


def print_tables(rows, breakdowns, env, size, source) -> None:
    where = env.get("gpu") or f"CPU ({env['cpu_count']} cores, {env['torch_threads']} torch threads)"
    print(f"## Table 6 on this machine: {where}, torch {env['torch']}, triton {env['triton']}\n")
    print(f"Input: {size[0]}x{size[1]} {source}, batch 1. GMACs = multiply-adds/1e9 (what thop calls FLOPs); "
          "GFLOPs = 2 x GMACs (FlopCounterMode). Paper: first IR-VIS test image, RTX 3090.\n")
    print("| method | input | paper FLOPs (G) | ours GMACs | ours GFLOPs | hook-counter GMACs | paper time (s) | "
          "ours time (s) [backend] | peak mem (MiB) | side where paper G = MACs / = FLOPs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        timing = ", ".join(f"{t['median_s']:.3f} [{b}, n={t['runs']}]" for b, t in r["timings"].items()) or "not timed"
        if r["timings"] and r["timed_size"] != r["input"]:
            timing += f" at {r['timed_size']}"
        side = (f"{r['side_matching_paper_as_macs']}² / {r['side_matching_paper_as_flops']}²"
                if "side_matching_paper_as_macs" in r else "–")
        print(f"| {r['method']} | {r['input']} | {fmt(r['paper_gflops'])} | {r['gmacs']:.2f} | {r['gflops']:.2f} | "
              f"{r['hook_gmacs']:.2f} | {fmt(r['paper_time_s'])} | {timing} | {fmt(r['peak_mem_mib'], '.0f')} | {side} |")
    print("\nHook-counter GMACs: only nn.Linear / nn.Conv2d module calls, like thop. For FusionMamba it misses the "
          "LDC convolutions, the x_proj/dt_proj einsums and the scan (and, in this implementation, the "
          "functionally called in_proj); if every nn.Linear/nn.Conv2d were called as a module (the official code) "
          "it would report: " + ", ".join(f"{r['method']} {r['hook_gmacs_if_modules_called']:.2f}" for r in rows
                                           if r["method"].startswith("FusionMamba")) + " GMACs.\n")
    for name in ("FusionMamba-base", "FusionMamba-tiny"):
        total = sum(breakdowns[name].values())
        print(f"### {name}: GMACs by component (total {total:.2f})\n")
        print("| component | GMACs | share |")
        print("|---|---|---|")
        for comp, g in breakdowns[name].items():
            print(f"| {comp} | {g:.3f} | {100 * g / total:.1f}% |")
        print()


if __name__ == "__main__":
    sys.exit(main())
