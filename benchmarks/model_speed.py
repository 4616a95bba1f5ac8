"""Time one FusionMamba forward pass per backend, side by side, in one run.

    python benchmarks/model_speed.py                       # base preset, 256x256, torch vs reference
    python benchmarks/model_speed.py --preset tiny --size 128 --runs 5 --backends torch,reference
    python benchmarks/model_speed.py --threads 1   # on a machine shared with other jobs (see below)

Each backend runs in a fresh subprocess (same seed, same weights and inputs) so that its peak
memory is its own: on CPU the growth of the process's max RSS over the forward pass, on CUDA
torch.cuda.max_memory_allocated above what was allocated before it. The time is the median of
`--runs` forward passes under torch.inference_mode after `--warmup` untimed ones; the
"reference" backend is slow, so it gets `--reference-runs` (1) runs and no warm-up by default.
When other processes hold the cores, multi-threaded elementwise ops stall at every OpenMP
barrier (an op of a few MB takes ~6 ms instead of ~0.4 ms); `--threads 1` then gives steadier numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def measure(args) -> dict:
    import torch

    from fusionmamba_triton.model import FusionMamba

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = FusionMamba.from_preset(args.preset, backend=args.backend).to(device).eval()
    g = torch.Generator().manual_seed(1)
    x1 = torch.rand(args.batch, 1, args.size, args.size, generator=g).to(device)
    x2 = torch.rand(args.batch, 1, args.size, args.size, generator=g).to(device)
    reference = args.backend == "reference"
    runs = args.reference_runs if reference else args.runs
    warmup = args.reference_warmup if reference else args.warmup

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        for _ in range(warmup):
            model(x1, x2)
        sync()
        for _ in range(runs):
            start = time.perf_counter()
            out = model(x1, x2)
            sync()
            times.append(time.perf_counter() - start)
        if device.type == "cuda":
            peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return dict(backend=args.backend, median_s=statistics.median(times), min_s=min(times), runs=runs,
                peak_mb=peak_mb, checksum=float(out.double().sum()), threads=torch.get_num_threads())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base")
    parser.add_argument("--size", type=int, default=256, help="image height and width (multiple of 32)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--backends", default="torch,reference", help="comma-separated; the first is the baseline")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reference-runs", type=int, default=1)
    parser.add_argument("--reference-warmup", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    parser.add_argument("--backend", help=argparse.SUPPRESS)  # set in the per-backend subprocess
    args = parser.parse_args()

    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.backend:  # worker: one backend, result as JSON on the last line
        print(json.dumps(measure(args)))
        return

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    print(f"FusionMamba '{args.preset}' forward, batch {args.batch}, {args.size}x{args.size}, device {args.device}")
    results = []
    for backend in backends:
        cmd = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--backend", backend, "--device", args.device]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{backend:>10}: failed\n{proc.stderr.strip()[-2000:]}")
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if not results:
        sys.exit(1)
    baseline = results[0]
    ratio_label = f"time / {baseline['backend']}"
    print(f"{'backend':>10} {'median s':>9} {'min s':>8} {'runs':>5} {'peak MB':>9} {ratio_label:>16}")
    for r in results:
        ratio = r["median_s"] / baseline["median_s"]
        print(f"{r['backend']:>10} {r['median_s']:9.3f} {r['min_s']:8.3f} {r['runs']:5d} {r['peak_mb']:9.1f} "
              f"{ratio:16.2f}")
    if len({round(r["checksum"], 2) for r in results}) > 1:
        print("warning: outputs differ between backends:", [r["checksum"] for r in results])
    print(f"(threads: {baseline['threads']}; timings on a shared machine are noisy)")


if __name__ == "__main__":
    main()
