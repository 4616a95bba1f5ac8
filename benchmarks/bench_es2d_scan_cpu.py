"""CPU benchmark of ES2D's whole scan (gather -> x / dt projections -> 4-group selective scan -> merge) at the base
model's four stage shapes: the fused numba kernel against the same numba scan run as separate ops, the torch path
and the step-by-step reference, in one run, forward under torch.inference_mode (as `fusionmamba fuse` runs it).

    python benchmarks/bench_es2d_scan_cpu.py                      # one thread, batch 1
    python benchmarks/bench_es2d_scan_cpu.py --threads 1 2 --rounds 3

Rows run interleaved, `--rounds` times, in this process; each time is the median of the pooled repeats. "x ref"
is the reference's time over the row's at the same thread count and stage; "x sep" the separate numba ops' over
the row's. "images" is how many images one base forward at 256x256 scans at that stage (its shared encoder runs
both inputs as a batch of 2), and the last line weighs each row's batch-1 times by it, an estimate of the scan's
share of one forward. The reference runs once per round (it is slow).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (D = 2 * dim of the stage, H = W, images scanned at that stage by one base forward at 256x256)
STAGES = ((192, 64, 18), (384, 32, 18), (768, 16, 81), (1536, 8, 18))
ROWS = ("reference", "torch", "numba separate", "numba fused")


def stage_inputs(dim: int, size: int, batch: int, seed: int = 0):
    """x (batch, D, H, W) as a view of channels-last memory (the conv output in SS2D) and SS2D's parameters."""
    import torch
    from torch import nn

    from fusionmamba_triton.layers.essm import register_ssm_parameters

    torch.manual_seed(seed)
    module = nn.Module()
    register_ssm_parameters(module, dim, math.ceil(dim / 32), 16)
    x = torch.nn.functional.silu(torch.randn(batch, size, size, dim)).permute(0, 3, 1, 2)
    params = [p.detach() for p in (module.x_proj_weight, module.dt_projs_weight, module.dt_projs_bias,
                                   module.A_logs, module.Ds)]
    return x, params


def run_row(row: str, x, params):
    from fusionmamba_triton.layers.essm import es2d_selective_scan

    if row == "reference":
        return es2d_selective_scan(x, *params, backend="reference")
    if row == "torch":
        return es2d_selective_scan(x, *params, backend="torch")
    return es2d_selective_scan(x, *params, backend="numba", fused=row == "numba fused")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=9, help="timed calls per row and round (reference: 1)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import torch

    times: dict = {}
    errors: dict = {}
    with torch.inference_mode():
        inputs = {(dim, size): stage_inputs(dim, size, args.batch) for dim, size, _ in STAGES}
        for threads in args.threads:
            torch.set_num_threads(threads)
            for (dim, size), (x, params) in inputs.items():  # warm up: compile / load every kernel
                expected = run_row("reference", x, params)
                for row in ROWS[1:]:
                    out = run_row(row, x, params)
                    errors[row, dim] = max(errors.get((row, dim), 0.0),
                                           ((out - expected).abs().max() / expected.abs().max()).item())
        for _ in range(args.rounds):
            for threads in args.threads:
                torch.set_num_threads(threads)
                for (dim, size), (x, params) in inputs.items():
                    for row in ROWS:
                        for _ in range(1 if row == "reference" else args.repeats):
                            start = time.perf_counter()
                            run_row(row, x, params)
                            times.setdefault((threads, dim, row), []).append(time.perf_counter() - start)

    print(f"ES2D scan forward at the base model's stage shapes, batch {args.batch}, N = 16, "
          f"torch {torch.__version__}; median ms over {args.rounds} interleaved rounds")
    header = f"{'threads':>7} {'D':>5} {'HxW':>6} {'images':>6} " + " ".join(f"{r:>15}" for r in ROWS)
    print(header + f" {'fused x ref':>11} {'fused x sep':>11} {'fused err':>9}")
    weighted: dict = {}
    for threads in args.threads:
        for dim, size, calls in STAGES:
            med = {row: statistics.median(times[threads, dim, row]) * 1e3 for row in ROWS}
            for row in ROWS:
                weighted[threads, row] = weighted.get((threads, row), 0.0) + calls * med[row]
            print(f"{threads:>7} {dim:>5} {size:>3}x{size:<2} {calls:>6} " + " ".join(f"{med[r]:>15.3f}" for r in ROWS)
                  + f" {med['reference'] / med['numba fused']:>11.1f} {med['numba separate'] / med['numba fused']:>11.2f}"
                  + f" {errors['numba fused', dim]:>9.1e}")
        w = {row: weighted[threads, row] for row in ROWS}
        print(f"{threads:>7} {'one base forward (weighted by images), ms':>23}  " + " ".join(f"{w[r]:>15.1f}" for r in ROWS)
              + f" {w['reference'] / w['numba fused']:>11.1f} {w['numba separate'] / w['numba fused']:>11.2f}")
    print("(x ref / x sep: the reference's / the separate numba ops' time over the fused kernel's; err: max error of the "
          "fused output relative to the reference's largest value)")


if __name__ == "__main__":
    main()
