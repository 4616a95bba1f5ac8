"""Kernel benchmarks: our backends against the reference and the obvious alternative, on the
model's real shapes (the four U-Net stages of a 256x256 and a 640x480 input).

    python benchmarks/bench_kernels.py [--quick] [--full] [--out-dir bench_out]
    pytest benchmarks/bench_kernels.py --benchmark-enable

Ops and providers (the baseline, against which ratios are printed, is marked *):
- selective scan, forward and forward+backward: *sequential (a mamba-ssm style PyTorch loop over
  time), reference (our ground truth, also sequential), torch (our fast PyTorch path), numba (our CPU kernel),
  triton (CUDA), mamba_ssm (mamba-ssm's CUDA selective_scan_fn, when installed);
- ES2D gather and merge: *reference (strided slicing), torch, triton;
- LDC: *conv2d (F.conv2d with the modulated weight, what one would write), torch, numba (CPU), triton;
  channels-last input, as in the model.
The shapes are the model's (fusionmamba_triton/kernels/configs.py, which the launchers' tuning and
the compile tests also use): stage i of an HxW input is h, w = H / 2^(i+2), W / 2^(i+2),
C = (96, 192, 384, 768)[i]; the scan runs over 4 groups of d_inner = 2C channels (D = 8C) with
L' = ceil(h/2) ceil(w/2), N = 16. On CUDA the Triton launchers autotune on each shape's first call
(the untimed warm-up).
Writes long-format CSV (op, provider, shape, median_ms, q20_ms, q80_ms, device) and a plot.
On CUDA the scan's achieved memory bandwidth is reported against the device's peak.
On CPU the default sweep is the 256x256 stages, with the scan's backward on stages 2-3 only
(a minute or more per call on the large stages); --full runs everything.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fusionmamba_triton.kernels.configs import BENCH_SIZES, MODEL_D_STATE as D_STATE, stage_shapes  # noqa: E402
from fusionmamba_triton.ops import es2d_merge, es2d_scan, ldc_conv2d, selective_scan, selective_scan_ref  # noqa: E402
from fusionmamba_triton.ops.backends import interpreter_enabled, numba_available  # noqa: E402
from fusionmamba_triton.ops.ldc import ldc_modulated_weight  # noqa: E402

BASELINE = {"scan_fwd": "sequential", "scan_fwd_bwd": "sequential", "es2d_scan": "reference",
            "es2d_merge": "reference", "ldc": "conv2d"}
# Peak DRAM bandwidth (GB/s) and fp32 non-tensor-core peak (TFLOP/s) of common GPUs, from vendor sheets.
GPU_PEAKS = {"H200": (4800, 67), "H100 SXM": (3350, 67), "H100 PCIe": (2000, 51), "H100": (3350, 67),
             "A100-SXM4-80GB": (2039, 19.5), "A100 80GB PCIe": (1935, 19.5), "A100": (1555, 19.5),
             "RTX 3090": (936, 35.6), "RTX 4090": (1008, 82.6), "L40S": (864, 91.6), "L4": (300, 30.3),
             "A10": (600, 31.2), "T4": (320, 8.1), "V100": (900, 15.7)}


# ----------------------------------------------------------------------------- inputs
def scan_inputs(s: dict, device, requires_grad=False, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    rand = lambda *shape, scale=1.0: (torch.randn(*shape, generator=g) * scale).to(device)
    d, length = s["D"], s["L"]
    t = {
        "u": rand(1, d, length),
        "delta": rand(1, d, length, scale=0.5),
        "A": -torch.exp(rand(d, D_STATE, scale=0.5)),
        "B": rand(1, 4, D_STATE, length),
        "C": rand(1, 4, D_STATE, length),
        "D": torch.ones(d, device=device),
        "delta_bias": rand(d, scale=0.1),
    }
    if requires_grad:
        for v in t.values():
            v.requires_grad_(True)
    return t


def sequential_scan(u, delta, A, B, C, D, delta_bias):
    """What a user would write without a kernel, in mamba-ssm's selective_scan_ref style: discretise
    everything up front, then a Python loop over time. Grouped B/C (1, G, N, L)."""
    groups = B.shape[1]
    delta = F.softplus(delta + delta_bias[:, None])
    Bx = B.repeat_interleave(u.shape[1] // groups, dim=1)  # (b, D, N, L)
    Cx = C.repeat_interleave(u.shape[1] // groups, dim=1)
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_bu = torch.einsum("bdl,bdnl,bdl->bdln", delta, Bx, u)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = delta_a[:, :, t] * h + delta_bu[:, :, t]
        ys.append(torch.einsum("bdn,bdn->bd", h, Cx[..., t]))
    return torch.stack(ys, dim=2) + u * D[:, None]


def scan_callable(provider: str, t: dict):
    args = (t["u"], t["delta"], t["A"], t["B"], t["C"])
    kw = dict(D=t["D"], delta_bias=t["delta_bias"], delta_softplus=True)
    if provider == "sequential":
        return lambda: sequential_scan(*args, t["D"], t["delta_bias"])
    if provider == "reference":
        return lambda: selective_scan_ref(*args, **kw)
    if provider in ("torch", "numba", "triton"):
        return lambda: selective_scan(*args, **kw, backend=provider)
    if provider == "mamba_ssm":
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        return lambda: selective_scan_fn(*args, **kw)
    raise ValueError(provider)


def with_backward(fn, tensors: dict):
    leaves = [v for v in tensors.values() if v.requires_grad]

    def run():
        out = fn()
        torch.autograd.grad(out.sum(), leaves)
    return run


def es2d_callables(provider: str, s: dict, device):
    x = torch.randn(1, s["d_inner"], s["h"], s["w"], generator=torch.Generator().manual_seed(0)).to(device)
    y = es2d_scan(x, backend="reference")
    if provider == "reference":
        from fusionmamba_triton.ops import es2d_merge_ref, es2d_scan_ref

        return (lambda: es2d_scan_ref(x)), (lambda: es2d_merge_ref(y, s["h"], s["w"]))
    return (lambda: es2d_scan(x, backend=provider)), (lambda: es2d_merge(y, s["h"], s["w"], backend=provider))


def ldc_callable(provider: str, s: dict, device):
    g = torch.Generator().manual_seed(0)
    c = s["C"]
    x = torch.randn(1, c, s["h"], s["w"], generator=g).to(device).contiguous(memory_format=torch.channels_last)  # the model's layout
    weight = (torch.randn(c, c, 3, 3, generator=g) * (9 * c) ** -0.5).to(device)
    base = torch.ones(c, c, 3, 3, device=device)
    mask = torch.ones(c, c, device=device)
    theta = torch.full((1,), 0.5, device=device)
    if provider == "conv2d":
        return lambda: F.conv2d(x, ldc_modulated_weight(weight, base, mask, theta), padding=1)
    return lambda: ldc_conv2d(x, weight, base, mask, theta, backend=provider)


# ----------------------------------------------------------------------------- timing
def measure(fn, device: torch.device, budget_s: float = 1.0, min_runs: int = 3, max_runs: int = 100) -> dict:
    """Median and 20/80% quantiles (ms) of fn() after one warm-up, within about budget_s
    (a single timed run when the warm-up alone took more than 4 budgets)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    fn()
    sync()
    if time.perf_counter() - t0 > 4 * budget_s:
        min_runs = 1
    times = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=5) if len(times) > 1 else [times[0]] * 4
    return {"median_ms": statistics.median(times), "q20_ms": q[0], "q80_ms": q[3], "runs": len(times)}


def providers_for(op: str, device: torch.device) -> list[str]:
    cuda = device.type == "cuda" or interpreter_enabled()  # triton: CUDA, or the interpreter (gpu_check --dry-run)
    if op.startswith("scan"):
        names = ["sequential", "reference", "torch"] + (["numba"] if device.type == "cpu" and numba_available() else [])
        names += ["triton"] if cuda else []
        try:
            import mamba_ssm  # noqa: F401

            if cuda:
                names.append("mamba_ssm")
        except ImportError:
            pass
        return names
    if op == "ldc":
        return ["conv2d", "torch"] + (["numba"] if device.type == "cpu" and numba_available() else []) + \
            (["triton"] if cuda else [])
    return ["reference", "torch"] + (["triton"] if cuda else [])


def case_callable(op: str, provider: str, s: dict, device):
    if op == "scan_fwd":
        return scan_callable(provider, scan_inputs(s, device))
    if op == "scan_fwd_bwd":
        t = scan_inputs(s, device, requires_grad=True)
        return with_backward(scan_callable(provider, t), t)
    if op in ("es2d_scan", "es2d_merge"):
        gather, merge = es2d_callables(provider, s, device)
        return gather if op == "es2d_scan" else merge
    if op == "ldc":
        return ldc_callable(provider, s, device)
    raise ValueError(op)


def scan_bytes_and_flops(s: dict) -> tuple[int, int]:
    """Forward DRAM traffic (fp32: read u, delta, B, C; write y) and FLOPs (9 L D N + L D)."""
    d, length = s["D"], s["L"]
    return 4 * (3 * d * length + 2 * 4 * D_STATE * length), 9 * length * d * D_STATE + length * d


def device_peaks(device: torch.device) -> tuple[float | None, float | None, str]:
    name = torch.cuda.get_device_name(device)
    for key, (bw, tflops) in GPU_PEAKS.items():
        if key.lower() in name.lower():
            return bw * 1e9, tflops * 1e12, name
    return None, None, name


# ----------------------------------------------------------------------------- sweep
SEQUENTIAL_BWD_LIMIT = 1024 * 768  # L * D above which sequential fwd+bwd baselines are skipped (minutes each)


def sweep(ops, shapes, device, budget_s, skip_slow_over: int | None, log=print, min_runs: int = 3) -> list[dict]:
    """skip_slow_over: L * D above which scan backward passes are skipped (None: run all)."""
    rows = []
    for op in ops:
        for s in shapes:
            for provider in providers_for(op, device):
                size = s["L"] * s["D"]
                slow = provider in ("sequential", "reference") and op.startswith("scan")
                if skip_slow_over and size > skip_slow_over and op == "scan_fwd_bwd":
                    continue  # CPU default: scan backward passes on the small stages only
                if slow and op == "scan_fwd_bwd" and size > SEQUENTIAL_BWD_LIMIT:
                    continue
                try:
                    fn = case_callable(op, provider, s, device)
                    r = measure(fn, device, budget_s, min_runs=min_runs)
                except Exception as err:  # report and keep going: one missing provider must not end the sweep
                    log(f"  {op} {provider} {s['name']}: skipped ({type(err).__name__}: {str(err)[:120]})")
                    continue
                rows.append({"op": op, "provider": provider, "shape": s["name"], "device": str(device.type), **r})
                log(f"  {op:12s} {provider:10s} {s['name']:14s} {r['median_ms']:10.3f} ms")
    return rows


def print_ratios(rows: list[dict]) -> None:
    print("\n| op | shape | provider | median ms | speed-up vs baseline |")
    print("|---|---|---|---|---|")
    base = {(r["op"], r["shape"]): r["median_ms"] for r in rows if r["provider"] == BASELINE[r["op"]]}
    for r in rows:
        ref = base.get((r["op"], r["shape"]))
        ratio = f"{ref / r['median_ms']:.2f}x" if ref else "(baseline not run)"
        mark = " *" if r["provider"] == BASELINE[r["op"]] else ""
        print(f"| {r['op']} | {r['shape']} | {r['provider']}{mark} | {r['median_ms']:.3f} | {ratio} |")


def print_bandwidth(rows: list[dict], shapes: list[dict], device) -> list[dict]:
    if device.type != "cuda":
        print("\nNo GPU: achieved memory bandwidth not measured.")
        return []
    bw_peak, fp32_peak, name = device_peaks(device)
    by_name = {s["name"]: s for s in shapes}
    out = []
    print(f"\nScan forward on {name}: achieved DRAM bandwidth (fp32 traffic: u, delta, B, C in; y out)")
    print("| provider | shape | GB/s | of peak BW | GFLOP/s | of fp32 peak | bound by |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r["op"] != "scan_fwd" or r["provider"] not in ("triton", "mamba_ssm", "torch"):
            continue
        nbytes, flops = scan_bytes_and_flops(by_name[r["shape"]])
        secs = r["median_ms"] / 1e3
        bw, fl = nbytes / secs, flops / secs
        f_bw = bw / bw_peak if bw_peak else None
        f_fl = fl / fp32_peak if fp32_peak else None
        if f_bw is None:
            bound = "unknown peak"
        elif max(f_bw, f_fl) < 0.3:
            bound = "latency / occupancy (neither resource near peak)"
        else:
            bound = "memory bandwidth" if f_bw >= f_fl else "fp32 / SFU throughput"
        fmt = lambda v: f"{100 * v:.1f}%" if v is not None else "?"
        print(f"| {r['provider']} | {r['shape']} | {bw / 1e9:.0f} | {fmt(f_bw)} | {fl / 1e9:.0f} | {fmt(f_fl)} | {bound} |")
        out.append({"provider": r["provider"], "shape": r["shape"], "gbps": bw / 1e9, "frac_bw": f_bw,
                    "gflops": fl / 1e9, "frac_fp32": f_fl, "bound": bound})
    return out


def write_csv(rows: list[dict], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["op", "provider", "shape", "median_ms", "q20_ms", "q80_ms", "device"],
                           extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="forward ops only, stages 2-3 of 256x256")
    parser.add_argument("--full", action="store_true", help="on CPU too: both input sizes, sequential baselines everywhere")
    parser.add_argument("--budget", type=float, default=None, help="seconds per case (default 1.0 on CUDA, 0.5 on CPU)")
    parser.add_argument("--size", action="append", default=None, metavar="HxW",
                        help="input size whose stages are benchmarked (repeatable; default: 256x256, and 480x640 on CUDA)")
    parser.add_argument("--dims", default=None, metavar="C0,C1,C2,C3",
                        help="stage widths instead of the model's 96,192,384,768 (gpu_check --dry-run: tiny ones)")
    parser.add_argument("--min-runs", type=int, default=3, help="timed runs per case at least (after one warm-up)")
    parser.add_argument("--no-plot", action="store_true", help="write the CSV only")
    parser.add_argument("--out-dir", default="bench_out")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    budget = args.budget if args.budget is not None else (1.0 if cuda else 0.5)
    ops = ["scan_fwd", "scan_fwd_bwd", "es2d_scan", "es2d_merge", "ldc"]
    sizes = list(BENCH_SIZES) if (cuda or args.full) else [BENCH_SIZES[0]]
    if args.size:
        sizes = [tuple(int(v) for v in size.lower().split("x")) for size in args.size]
    dims = tuple(int(c) for c in args.dims.split(",")) if args.dims else None
    shapes = [s for hw in sizes for s in (stage_shapes(*hw, dims) if dims else stage_shapes(*hw))]
    skip_slow_over = None if (cuda or args.full) else 64 * 3072  # CPU: scan backward on stages 2-3 only
    if args.quick:
        ops = ["scan_fwd", "es2d_scan", "es2d_merge", "ldc"]
        shapes = stage_shapes(256, 256)[2:]
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    log(f"bench_kernels on {device} ({torch.cuda.get_device_name(device) if cuda else 'CPU'}), "
        f"torch {torch.__version__}, {len(shapes)} shapes, ops {ops}")
    rows = sweep(ops, shapes, device, budget, skip_slow_over, log, args.min_runs)
    print_ratios(rows)
    print_bandwidth(rows, shapes, device)
    csv_path = os.path.join(args.out_dir, "bench_kernels.csv")
    write_csv(rows, csv_path)
    log(f"wrote {csv_path}")
    if not args.no_plot:
        from benchmarks.plot_kernels import plot_csv

        log(plot_csv(csv_path, os.path.join(args.out_dir, "bench_kernels.png")))
    return 0


# ----------------------------------------------------------------------------- pytest-benchmark
def _pytest_cases():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = stage_shapes(256, 256) + (stage_shapes(480, 640) if device.type == "cuda" else [])
    if device.type == "cpu":
        shapes = shapes[3:]  # CPU: the smallest stage keeps the sequential fwd+bwd baselines to seconds
    for op in ("scan_fwd", "scan_fwd_bwd", "es2d_scan", "es2d_merge", "ldc"):
        for s in shapes:
            for provider in providers_for(op, device):
                yield op, provider, s


try:
    import pytest

    @pytest.mark.parametrize("op,provider,shape", [(o, p, s) for o, p, s in _pytest_cases()],
                             ids=[f"{o}-{p}-{s['name']}" for o, p, s in _pytest_cases()])
    def test_kernel_benchmark(benchmark, op, provider, shape):
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        fn = case_callable(op, provider, shape, device)
        if device.type == "cuda":
            def fn_sync():
                fn()
                torch.cuda.synchronize()
            benchmark(fn_sync)
        else:
            benchmark(fn)
except ImportError:  # running as a script without pytest installed
    pass


if __name__ == "__main__":
    sys.exit(main())
