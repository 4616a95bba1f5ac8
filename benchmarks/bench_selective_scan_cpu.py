"""CPU benchmark: the "torch" selective scan backend against a sequential baseline, at the model's shapes.

The baseline is the straightforward way to write the scan in PyTorch (as mamba-ssm's reference does):
precompute exp(ΔA) and Δ·B·u over (batch, D, L, N), then one PyTorch step per time step.
Both are timed in this run; the script prints medians, their ratio and the max relative error.

    python benchmarks/bench_selective_scan_cpu.py [--length 1024] [--repeats 5] [--forward-only] [--sweep]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from fusionmamba_triton.ops.selective_scan import selective_scan, selective_scan_torch


def sequential_baseline(u, delta, A, B, C, D, delta_bias):
    """Grouped B/C (batch, G, N, L), delta_bias, softplus, D skip; fp32; one step per time step."""
    batch, dim, length = u.shape
    delta = F.softplus(delta + delta_bias[None, :, None])
    B = B.repeat_interleave(dim // B.shape[1], dim=1)
    C = C.repeat_interleave(dim // C.shape[1], dim=1)
    decay = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    drive = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    state = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        state = decay[:, :, t] * state + drive[:, :, t]
        ys.append(torch.einsum("bdn,bdn->bd", state, C[:, :, :, t]))
    return torch.stack(ys, dim=2) + D[None, :, None] * u


def model_inputs(batch=1, groups=4, dim=768, length=1024, dstate=16, seed=0):
    """Inputs shaped like one FusionMamba scan: u (batch, G*dim, L), grouped B/C, N = 16, model init."""
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


def median_time(fn, repeats):
    """(median seconds over `repeats` calls, result of the last call)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def max_rel_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def fwd_bwd(fn, inputs):
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.backward(torch.ones_like(out))
    return out, [t.grad for t in leaves]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--forward-only", action="store_true", help="skip the (slow) forward+backward timing")
    parser.add_argument("--sweep", action="store_true", help="also time chunk / channel-block choices")
    args = parser.parse_args()
    inputs = model_inputs(length=args.length)
    u, delta, A, B, C, D, delta_bias = inputs
    print(f"shapes: u {tuple(u.shape)}, B/C {tuple(B.shape)}, N {A.shape[1]}; threads {torch.get_num_threads()}")

    def ours(u, delta, A, B, C, D, delta_bias):
        return selective_scan(u, delta, A, B, C, D, delta_bias=delta_bias, delta_softplus=True, backend="torch")

    warm = model_inputs(length=16)  # keep one-time costs (the first custom-op dispatch) out of the timings
    ours(*warm)
    sequential_baseline(*warm)
    base_repeats = max(1, args.repeats // 2)  # the baseline is slow; its runs vary less in relative terms
    with torch.no_grad():
        t_base, expected = median_time(lambda: sequential_baseline(*inputs), base_repeats)
        t_ours, got = median_time(lambda: ours(*inputs), args.repeats)
    print(f"forward   baseline {t_base * 1e3:8.1f} ms   torch backend {t_ours * 1e3:8.1f} ms   "
          f"speed-up {t_base / t_ours:5.1f}x   max rel err {max_rel_error(got, expected):.2e}")

    if not args.forward_only:
        t_base, (_, base_grads) = median_time(lambda: fwd_bwd(sequential_baseline, inputs), base_repeats)
        t_ours, (_, our_grads) = median_time(lambda: fwd_bwd(ours, inputs), args.repeats)
        grad_err = max(max_rel_error(a, b) for a, b in zip(our_grads, base_grads))
        print(f"fwd+bwd   baseline {t_base * 1e3:8.1f} ms   torch backend {t_ours * 1e3:8.1f} ms   "
              f"speed-up {t_base / t_ours:5.1f}x   max rel err (grads) {grad_err:.2e}")

    if args.sweep:
        with torch.no_grad():
            for chunk in (16, 32, 64):
                for block_d in (64, 128, 256, 768):
                    t, _ = median_time(lambda: selective_scan_torch(u, delta, A, B, C, D, None, delta_bias, True,
                                                                    chunk=chunk, block_d=block_d), 3)
                    print(f"sweep chunk {chunk:3d} block_d {block_d:4d}: {t * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
