"""Where one FusionMamba forward pass spends its time, op by op, without a profiler's per-op overhead.

    python benchmarks/op_times.py                       # base preset, 256x256, fp32, one thread
    python benchmarks/op_times.py --precision bf16 --threads 2 --top 30

Every ATen and custom op (the scan, ES2D, the oneDNN matrix products...) is timed with a wall clock
around its call from a TorchDispatchMode, and the times are summed per op name. torch.profiler adds a
fixed cost to every op it records, which on a small VM multiplied the apparent time of the model's
many small copies several times over; here that cost falls outside the timed calls, and the table
says how much of the pass they cover. The pass runs as `fusionmamba fuse` runs it: inference mode,
inside model.frozen(), after two untimed passes.
"""
from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base")
    parser.add_argument("--size", type=int, default=256, help="height and width, a multiple of 32")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--top", type=int, default=20, help="rows to print")
    args = parser.parse_args()

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from fusionmamba_triton.model import FusionMamba

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = FusionMamba.from_preset(args.preset, backend=args.backend).eval()
    g = torch.Generator().manual_seed(1)
    x1, x2 = (torch.rand(1, 1, args.size, args.size, generator=g) for _ in range(2))
    totals: dict[str, list] = {}

    class OpTimer(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            start = time.perf_counter()
            out = func(*args, **(kwargs or {}))
            elapsed = time.perf_counter() - start
            entry = totals.setdefault(func.overloadpacket.__name__, [0, 0.0])
            entry[0] += 1
            entry[1] += elapsed
            return out

    dtype = torch.bfloat16 if args.precision == "bf16" else None
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None), model.frozen():
        for _ in range(2):
            model(x1, x2)
        start = time.perf_counter()
        model(x1, x2)
        plain = time.perf_counter() - start
        with OpTimer():
            start = time.perf_counter()
            model(x1, x2)
            traced = time.perf_counter() - start
    covered = sum(seconds for _, seconds in totals.values())
    print(f"FusionMamba '{args.preset}' forward, {args.size}x{args.size}, {args.precision}, {args.threads} thread(s): "
          f"{plain:.3f} s untraced; traced {traced:.3f} s, of which {covered:.3f} s inside ops")
    print(f"{'op':>28} {'calls':>6} {'ms':>9} {'share':>6}")
    for name, (calls, seconds) in sorted(totals.items(), key=lambda item: -item[1][1])[:args.top]:
        print(f"{name:>28} {calls:6d} {seconds * 1e3:9.1f} {seconds / covered:6.1%}")


if __name__ == "__main__":
    main()
