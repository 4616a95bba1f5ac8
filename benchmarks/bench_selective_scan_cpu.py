"""CPU benchmark of the selective scan at the model's shapes: the numba kernel and the chunked torch path
against a sequential baseline, forward and forward+backward, on one and two threads, in one run.

The baseline is the straightforward way to write the scan in PyTorch (as mamba-ssm's reference does):
precompute exp(ΔA) and Δ·B·u over (batch, D, L, N), then one PyTorch step per time step. Every
(implementation, threads) pair runs in a fresh subprocess, so its peak memory (growth of max RSS) is its
own. The table gives medians, the speed-up over the baseline at the same thread count, the max relative
error against the baseline, and the numba kernels' first-call compile time (numba caches it on disk, so
only a fresh install pays it: "cached" means it was loaded from that cache). `--rounds R` runs the whole
sequence R times, interleaved, and pools each row's passes (for machines whose speed drifts over minutes).

    python benchmarks/bench_selective_scan_cpu.py                   # base stage 0: 4 x 192 channels, L = 1024
    python benchmarks/bench_selective_scan_cpu.py --dim 768 --threads 1 2 --load 1   # with a busy core beside
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the benchmarks package

IMPLEMENTATIONS = ("sequential", "torch", "numba")


def model_inputs(batch=1, groups=4, dim=192, length=1024, dstate=16, seed=0):
    """Inputs shaped like one FusionMamba scan: u (batch, G*dim, L), grouped B/C, N = 16, model init."""
    import torch

    g = torch.Generator().manual_seed(seed)
    channels = groups * dim
    u = torch.randn(batch, channels, length, generator=g)
    delta = torch.randn(batch, channels, length, generator=g) * 0.5
    A = -torch.arange(1, dstate + 1, dtype=torch.float32).repeat(channels, 1)
    B = torch.randn(batch, groups, dstate, length, generator=g)
    C = torch.randn(batch, groups, dstate, length, generator=g)
    D = torch.ones(channels)
    dt = torch.exp(torch.rand(channels, generator=g) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(1e-3)))
                   + torch.log(torch.tensor(1e-3))).clamp(min=1e-4)
    delta_bias = dt + torch.log(-torch.expm1(-dt))  # inverse softplus
    return u, delta, A, B, C, D, delta_bias


def measure(impl: str, threads: int, args) -> dict:
    """Time one implementation in this process: forward and (unless --forward-only) forward+backward."""
    import torch

    from benchmarks.bench_kernels import sequential_scan
    from fusionmamba_triton.ops.selective_scan import selective_scan

    torch.set_num_threads(threads)
    inputs = model_inputs(batch=args.batch, dim=args.dim, length=args.length)
    compile_s = None
    if impl == "numba":
        from fusionmamba_triton.kernels import selective_scan_cpu

        warm = model_inputs(batch=1, dim=4, length=8)
        start = time.perf_counter()
        selective_scan(*warm[:5], D=warm[5], delta_bias=warm[6], delta_softplus=True, backend="numba")
        leaves = [t.clone().requires_grad_() for t in warm]
        selective_scan(*leaves[:5], D=leaves[5], delta_bias=leaves[6], delta_softplus=True,
                       backend="numba").sum().backward()
        compile_s = time.perf_counter() - start
        kernel = selective_scan_cpu.scan_fwd_kernel(False, selective_scan_cpu.padded_dstate(16))
        cached = bool(kernel.stats.cache_hits) and all(kernel.stats.cache_hits.values())

    def run(*tensors):
        if impl == "sequential":
            return sequential_scan(*tensors)
        u, delta, A, B, C, D, bias = tensors
        return selective_scan(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, backend=impl)

    def fwd_bwd():
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = run(*leaves)
        out.backward(torch.ones_like(out))
        return out, [t.grad for t in leaves]

    repeats = args.baseline_repeats if impl == "sequential" else args.repeats
    warm = model_inputs(batch=1, dim=4, length=16)
    with torch.no_grad():
        run(*warm)  # one-time costs (the first custom-op dispatch) stay out of the timings
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            out = run(*inputs)
            times.append(time.perf_counter() - start)
    result = {"impl": impl, "threads": threads, "forward_times": times, "compile_s": compile_s}
    grads = None
    if not args.forward_only:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            _, grads = fwd_bwd()
            times.append(time.perf_counter() - start)
        result["fwd_bwd_times"] = times
    result["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    if impl == "numba":
        result["cached"] = cached
    torch.save({"out": out, "grads": grads}, args.save)
    return result


def _busy_loop() -> None:
    while True:
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dim", type=int, default=192, help="channels per group (4 groups); the base model's "
                        "stage 0 has 192, its widest scan 768")
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--impls", nargs="+", default=list(IMPLEMENTATIONS), choices=IMPLEMENTATIONS,
                        help="the first is the baseline")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline-repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repeats of the whole sequence")
    parser.add_argument("--forward-only", action="store_true")
    parser.add_argument("--load", type=int, default=0, help="busy processes to run beside the measurements")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)  # IMPL THREADS, in the subprocess
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker[0], int(args.worker[1]), args)))
        return

    import tempfile

    import torch

    print(f"selective scan: u ({args.batch}, {4 * args.dim}, {args.length}), grouped B/C (4 groups), N 16, "
          f"softplus + delta bias + D; {args.load} busy process(es) beside")
    busy = [multiprocessing.Process(target=_busy_loop, daemon=True) for _ in range(args.load)]
    for p in busy:
        p.start()
    rows = {}
    argv = [a for a in sys.argv[1:] if a != "--worker"]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for _ in range(args.rounds):
                for threads in args.threads:
                    for impl in args.impls:
                        save = os.path.join(tmp, f"{impl}-{threads}.pt")
                        cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", impl, str(threads),
                               "--save", save]
                        proc = subprocess.run(cmd, capture_output=True, text=True)
                        if proc.returncode != 0:
                            print(f"{impl} ({threads} threads): failed\n{proc.stderr.strip()[-2000:]}")
                            continue
                        row = json.loads(proc.stdout.strip().splitlines()[-1])
                        pooled = rows.setdefault((threads, impl), dict(row, forward_times=[], fwd_bwd_times=[],
                                                                       peak_mb=0.0))
                        pooled["forward_times"] += row["forward_times"]
                        pooled["fwd_bwd_times"] += row.get("fwd_bwd_times", [])
                        pooled["peak_mb"] = max(pooled["peak_mb"], row["peak_mb"])
            rows = [rows[key] for key in sorted(rows, key=lambda k: (args.threads.index(k[0]), args.impls.index(k[1])))]
            for row in rows:  # the last round's outputs and gradients: every round computes the same ones
                row["saved"] = torch.load(os.path.join(tmp, f"{row['impl']}-{row['threads']}.pt"))
                row["forward_s"] = statistics.median(row.pop("forward_times"))
                fwd_bwd = row.pop("fwd_bwd_times")
                if fwd_bwd:
                    row["fwd_bwd_s"] = statistics.median(fwd_bwd)
        finally:
            for p in busy:
                p.terminate()

    def rel_error(a, b):
        return float((a - b).abs().max() / b.abs().max())

    print(f"{'impl':>10} {'threads':>7} {'fwd ms':>9} {'x fwd':>7} {'fwd+bwd ms':>11} {'x fwd+bwd':>9} "
          f"{'peak MB':>8} {'max rel err':>11} {'compile s':>10}")
    for row in rows:
        base = next((r for r in rows if r["impl"] == args.impls[0] and r["threads"] == row["threads"]), None)
        x_fwd = f"{base['forward_s'] / row['forward_s']:7.1f}" if base else f"{'-':>7}"
        fb = row.get("fwd_bwd_s")
        x_fb = f"{base['fwd_bwd_s'] / fb:9.1f}" if base and fb else f"{'-':>9}"
        errors = []
        if base:
            errors.append(rel_error(row["saved"]["out"], base["saved"]["out"]))
            if row["saved"]["grads"] is not None and base["saved"]["grads"] is not None:
                errors += [rel_error(g, h) for g, h in zip(row["saved"]["grads"], base["saved"]["grads"])]
        compile_s = "-" if row["compile_s"] is None else f"{row['compile_s']:.1f}" + (" cached" if row.get("cached") else "")
        print(f"{row['impl']:>10} {row['threads']:>7} {row['forward_s'] * 1e3:9.1f} {x_fwd} "
              f"{(fb or float('nan')) * 1e3:11.1f} {x_fb} {row['peak_mb']:8.0f} {max(errors) if errors else 0:11.1e} "
              f"{compile_s:>10}")
    print(f"(x: speed-up over {args.impls[0]} at the same thread count; max rel err: largest over the output and every "
          "gradient, relative to the baseline's max magnitude)")
    for row in rows:
        row.pop("saved")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items() if k not in ("worker", "save")}, "rows": rows}, f,
                      indent=2)


if __name__ == "__main__":
    main()
