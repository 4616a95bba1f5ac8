"""Plot the long-format CSV written by bench_kernels.py: one panel per op, median time per
provider across shapes (log scale).

    python benchmarks/plot_kernels.py bench_out/bench_kernels.csv bench_out/bench_kernels.png
"""
from __future__ import annotations

import csv
import os
import sys
from collections import defaultdict


def plot_csv(csv_path: str, png_path: str) -> str:
    """Write the plot; returns a one-line message (also when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot written"
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return f"{csv_path} has no rows: no plot written"
    ops = list(dict.fromkeys(r["op"] for r in rows))
    fig, axes = plt.subplots(1, len(ops), figsize=(4.2 * len(ops), 4), squeeze=False)
    for ax, op in zip(axes[0], ops):
        shapes = list(dict.fromkeys(r["shape"] for r in rows if r["op"] == op))
        series = defaultdict(dict)
        for r in rows:
            if r["op"] == op:
                series[r["provider"]][r["shape"]] = float(r["median_ms"])
        for provider, values in series.items():
            xs = [i for i, s in enumerate(shapes) if s in values]
            ax.plot(xs, [values[shapes[i]] for i in xs], marker="o", label=provider)
        ax.set_title(op)
        ax.set_yscale("log")
        ax.set_ylabel("median ms")
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels(shapes, rotation=45, ha="right", fontsize=7)
        ax.legend(fontsize=7)
    fig.suptitle(f"device: {rows[0]['device']}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, png_path)
    plt.close(fig)
    return f"wrote {png_path}"


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: plot_kernels.py CSV PNG")
    print(plot_csv(sys.argv[1], sys.argv[2]))
