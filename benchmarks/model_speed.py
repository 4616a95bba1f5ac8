"""Time FusionMamba on the CPU (or a GPU) across backends, precisions and thread counts, in one run.

    python benchmarks/model_speed.py                                  # base preset, 256x256, forward
    python benchmarks/model_speed.py --mode train --preset small --size 128 --batch 4
    python benchmarks/model_speed.py --configs numba:fp32:1 numba:bf16:1 --load 1   # with a busy core

Each configuration BACKEND:PRECISION:THREADS (precision fp32, or bf16 / fp16 autocast; THREADS a count,
or "auto": as many as there are idle cores, what the commands do by default) runs in a fresh
subprocess with the same seed, weights and inputs, so its peak memory is its own: on CPU the growth of
the process's max RSS, on CUDA torch.cuda.max_memory_allocated above what was allocated before. The
time is the median of `--runs` passes after `--warmup` untimed ones ("reference" gets
`--reference-runs` and no warm-up: it is slow). Forward passes run under torch.inference_mode inside
model.frozen(), as `fusionmamba fuse` runs them (each LDC's modulated weight is built once); a
training step is forward, the paper loss, backward and an Adam step. The table gives each time
relative to the first configuration and to the reference, and the output difference from the first
fp32 configuration in grey levels (0-255) on the clipped output. `--load N` keeps N other processes
busy during the measurements, to show what threads do on a shared machine. `--rounds R` runs the
whole sequence of subprocesses R times, interleaved, and pools each configuration's passes: on a
machine whose speed drifts over minutes (a shared VM) the ratios then compare times taken side by side
rather than minutes apart.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

DEFAULT_CONFIGS = {
    "forward": ["reference:fp32:1", "torch:fp32:1", "numba:fp32:1", "numba:bf16:1", "numba:fp32:2", "numba:bf16:2"],
    "train": ["torch:fp32:1", "numba:fp32:1", "numba:bf16:1", "torch:fp32:2", "numba:fp32:2", "numba:bf16:2"],
}
PRECISIONS = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


def parse_config(text: str) -> tuple[str, str, int | None]:
    """(backend, precision, threads); threads None for "auto" (fusionmamba_triton.threads.auto_threads)."""
    try:
        backend, precision, threads = text.split(":")
        threads = None if threads == "auto" else int(threads)
    except ValueError:
        raise SystemExit(f"--configs: expected BACKEND:PRECISION:THREADS (e.g. numba:bf16:1 or numba:fp32:auto), "
                         f"got {text!r}") from None
    if precision not in PRECISIONS or (threads is not None and threads < 1):
        raise SystemExit(f"--configs: precision must be one of {sorted(PRECISIONS)} and threads >= 1, got {text!r}")
    return backend, precision, threads


def measure(args, config: str, output_path: str) -> dict:
    """Time one configuration in this process; the clipped output of the last pass goes to output_path."""
    import torch

    from fusionmamba_triton.losses import FusionLoss
    from fusionmamba_triton.model import FusionMamba

    from fusionmamba_triton.threads import configure_threads

    backend, precision, threads = parse_config(config)
    threads = configure_threads(threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = FusionMamba.from_preset(args.preset, backend=backend).to(device)
    g = torch.Generator().manual_seed(1)
    x1 = torch.rand(args.batch, 1, args.size, args.size, generator=g).to(device)
    x2 = torch.rand(args.batch, 1, args.size, args.size, generator=g).to(device)
    dtype = getattr(torch, PRECISIONS[precision]) if PRECISIONS[precision] else None
    reference = backend == "reference"
    runs = args.reference_runs if reference else args.runs
    warmup = 0 if reference else args.warmup
    train = args.mode == "train"
    model.train(train)
    criterion = FusionLoss("paper")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def one_pass():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(x1, x2).float()
        if train:
            loss, _ = criterion(out, x1, x2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return out

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    with torch.inference_mode(not train), (contextlib.nullcontext() if train else model.frozen()):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        for _ in range(warmup):
            one_pass()
        sync()
        for _ in range(runs):
            start = time.perf_counter()
            out = one_pass()
            sync()
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    torch.save(out.detach().clamp(0, 1).cpu(), output_path)
    return dict(config=config, threads=threads, times=times, peak_mb=peak_mb)


def _busy_loop() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("forward", "train"), default="forward")
    parser.add_argument("--preset", default=None, help="default: base (forward), small (train)")
    parser.add_argument("--size", type=int, default=None, help="height and width, a multiple of 32 (default 256 / 128)")
    parser.add_argument("--batch", type=int, default=None, help="default 1 (forward), 4 (train)")
    parser.add_argument("--configs", nargs="+", default=None,
                        help="BACKEND:PRECISION:THREADS entries; the first is the baseline of the ratio column")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reference-runs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repeats of the whole sequence")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--load", type=int, default=0, help="busy processes to run beside the measurements")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)  # CONFIG OUTPUT_PATH, in the subprocess
    args = parser.parse_args()
    train = args.mode == "train"
    args.preset = args.preset or ("small" if train else "base")
    args.size = args.size or (128 if train else 256)
    args.batch = args.batch or (4 if train else 1)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        print(json.dumps(measure(args, *args.worker)))
        return

    configs = args.configs or DEFAULT_CONFIGS[args.mode]
    for config in configs:
        parse_config(config)
    what = "training step (paper loss, Adam)" if train else "forward"
    print(f"FusionMamba '{args.preset}' {what}, batch {args.batch}, {args.size}x{args.size}, device {args.device}, "
          f"{args.load} busy process(es) beside")
    busy = [multiprocessing.Process(target=_busy_loop, daemon=True) for _ in range(args.load)]
    for p in busy:
        p.start()
    results, outputs = {}, {}
    argv = [a for a in sys.argv[1:] if a != "--configs" and a not in configs]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for _ in range(args.rounds):
                for i, config in enumerate(configs):
                    out_path = os.path.join(tmp, f"{i}.pt")
                    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--device", args.device,
                           "--worker", config, out_path]
                    proc = subprocess.run(cmd, capture_output=True, text=True)
                    if proc.returncode != 0:
                        print(f"{config}: failed\n{proc.stderr.strip()[-2000:]}")
                        continue
                    row = json.loads(proc.stdout.strip().splitlines()[-1])
                    pooled = results.setdefault((i, config), dict(row, times=[], peak_mb=0.0))
                    pooled["times"] += row["times"]
                    pooled["peak_mb"] = max(pooled["peak_mb"], row["peak_mb"])
                    outputs[config] = out_path
            results = [results[key] for key in sorted(results)]
            for r in results:
                times = r.pop("times")
                r.update(median_s=statistics.median(times), min_s=min(times), runs=len(times))
            import torch

            fp32 = next((r["config"] for r in results if ":fp32:" in r["config"]), None)
            reference_out = torch.load(outputs[fp32]) if fp32 else None
            for r in results:
                diff = (torch.load(outputs[r["config"]]) - reference_out).abs() * 255 if fp32 else None
                r["diff_mean"] = float(diff.mean()) if diff is not None else None
                r["diff_max"] = float(diff.max()) if diff is not None else None
        finally:
            for p in busy:
                p.terminate()
    if not results:
        sys.exit(1)
    baseline = results[0]
    reference = next((r for r in results if r["config"].startswith("reference:")), None)
    print(f"{'config':>16} {'median s':>9} {'min s':>8} {'runs':>5} {'peak MB':>8} "
          f"{'x vs ' + baseline['config']:>22} {'x vs reference':>15} {'diff mean/max (grey)':>21}")
    for r in results:
        vs_base = baseline["median_s"] / r["median_s"]
        vs_ref = f"{reference['median_s'] / r['median_s']:15.2f}" if reference else f"{'-':>15}"
        diff = f"{r['diff_mean']:.3f} / {r['diff_max']:.2f}" if r["diff_mean"] is not None else "-"
        label = r["config"] if r["config"].endswith(f":{r['threads']}") else f"{r['config']} ({r['threads']})"
        print(f"{label:>16} {r['median_s']:9.3f} {r['min_s']:8.3f} {r['runs']:5d} {r['peak_mb']:8.0f} "
              f"{vs_base:22.2f} {vs_ref} {diff:>21}")
    print("(x: speed-up, the baseline's time over this one's; diff: against the first fp32 configuration, "
          "on the output clipped to [0, 1]; the differences of fp32 backends are float rounding)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items() if k != "worker"}, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
