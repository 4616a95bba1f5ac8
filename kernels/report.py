"""Resource table of every AOT-compiled kernel: registers, spills, stack and shared memory on sm_80 / sm_90.

    python -m fusionmamba_triton.kernels.report [--arch 80 90] [--module selective_scan ...] [--json]

Compilation needs real (not interpreted) kernels, so run this with TRITON_INTERPRET unset or 0.
Each kernels module lists its compile configs in aot_specs(); modules without one are skipped.
"""
from __future__ import annotations

import argparse
import importlib
import json

MODULES = ("selective_scan", "es2d", "ldc")
ARCHS = (80, 90)


def iter_specs(modules=MODULES):
    """(module name, spec) for every kernels module that defines aot_specs()."""
    for module_name in modules:
        try:
            module = importlib.import_module(f"{__package__}.{module_name}")
        except ImportError:
            continue
        for spec in getattr(module, "aot_specs", list)():
            yield module_name, spec


def compile_all(archs=ARCHS, modules=MODULES) -> list[dict]:
    """One row per (spec, arch): module, label, arch, and either the resources or the compiler error."""
    from .aot import compile_kernel

    rows = []
    for module_name, spec in iter_specs(modules):
        for arch in archs:
            row = {"module": module_name, "label": spec["label"], "arch": arch}
            try:
                res = compile_kernel(spec["fn"], spec["signature"], spec["constexprs"], arch=arch,
                                     num_warps=spec["num_warps"], num_stages=spec.get("num_stages", 3),
                                     maxnreg=spec.get("maxnreg"))
                row.update(kernel=res.name, registers=res.registers, spill_bytes=res.spill_bytes,
                           stack_bytes=res.stack_bytes, shared_bytes=res.shared_bytes, error=None)
            except Exception as exc:  # reported per kernel, so one failure does not hide the others
                row.update(kernel=getattr(spec["fn"], "__name__", "?"), error=f"{type(exc).__name__}: {exc}")
            rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS))
    parser.add_argument("--module", nargs="+", default=list(MODULES), choices=MODULES)
    parser.add_argument("--json", action="store_true", help="print one JSON object per line instead of a table")
    args = parser.parse_args(argv)
    rows = compile_all(args.arch, args.module)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    header = (f"{'kernel':<34} {'label':<46} {'arch':>6} {'registers':>10} {'spill B':>8} {'stack B':>8} "
              f"{'shared B':>9}")
    print(header)
    print("-" * len(header))
    for row in rows:
        if row["error"]:
            print(f"{row['kernel']:<34} {row['label']:<46} {'sm_' + str(row['arch']):>6}  FAILED: "
                  f"{row['error'].splitlines()[0][:120]}")
        else:
            print(f"{row['kernel']:<34} {row['label']:<46} {'sm_' + str(row['arch']):>6} {row['registers']:>10} "
                  f"{row['spill_bytes']:>8} {row['stack_bytes']:>8} {row['shared_bytes']:>9}")


if __name__ == "__main__":
    main()
