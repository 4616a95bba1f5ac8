"""What bf16 (or fp16) autocast changes in the fused images and their scores, against fp32, on real pairs.

    python benchmarks/precision_drift.py                                   # the bundled sample pairs
    python benchmarks/precision_drift.py --data ../shared/data/train/pet-mri/val --task pet-mri --max-pairs 8

Each pair is fused twice with the task's bundled weights (or --weights): in fp32 and under autocast.
The table gives, per pair, the mean and max absolute difference of the two 8-bit outputs in grey levels
(0-255), the time of each fusion, and the paper's metrics of both; the last rows give the means and the
largest metric change. Outputs are rounded to 8 bits as `fusionmamba fuse` writes them.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

METRICS = ("vif", "scd", "qabf", "sf", "ms_ssim", "fmi", "ssim", "psnr")
SAMPLES = {"tno_05": "ir-vis", "tno_15": "ir-vis", "itk_brain": "ct-mri"}  # bundled pair -> the task whose weights fuse it


def main() -> None:
    import torch

    from fusionmamba_triton.data import TASKS, find_pairs, find_task_dirs
    from fusionmamba_triton.imaging import load_image, sample_pair
    from fusionmamba_triton.inference import fuse, load_model
    from fusionmamba_triton.report import score

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a folder holding a task's a/b folders (default: the bundled sample pairs)")
    parser.add_argument("--task", choices=sorted(TASKS), default=None)
    parser.add_argument("--weights", default=None, help="default: the task's bundled weights")
    parser.add_argument("--precision", choices=("bf16", "fp16"), default="bf16")
    parser.add_argument("--max-pairs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.data:
        a_dir, b_dir, task = find_task_dirs(args.data, args.task)
        jobs = [(stem, a, b, task) for stem, a, b in find_pairs(a_dir, b_dir)[0]]
    else:
        jobs = [(name, *sample_pair(name), task) for name, task in SAMPLES.items()]
    jobs = jobs[: args.max_pairs]
    models = {}
    rows = []
    for stem, a_path, b_path, task in jobs:
        if task not in models:
            models[task] = load_model(args.weights, task=task)
        a, b = load_image(a_path), load_image(b_path)
        colour = TASKS[task].colour_source
        result = {"pair": stem}
        outputs = {}
        for precision in ("fp32", args.precision):
            start = time.perf_counter()
            fused = fuse(models[task], a, b, colour_source=colour, autocast_dtype=precision)
            result[f"{precision}_s"] = time.perf_counter() - start
            outputs[precision] = np.round(fused * 255.0)
            result[precision] = score(a, b, outputs[precision] / 255.0, METRICS)
        diff = np.abs(outputs["fp32"] - outputs[args.precision])
        result["diff_mean"], result["diff_max"] = float(diff.mean()), float(diff.max())
        rows.append(result)

    low = args.precision
    header = f"{'pair':>12} {'mean diff':>9} {'max diff':>8} {'fp32 s':>7} {low + ' s':>7}  " + " ".join(
        f"{m + ' fp32/' + low:>20}" for m in METRICS)
    print(header)
    for r in rows:
        cells = " ".join(f"{r['fp32'][m]:9.4f}/{r[low][m]:<10.4f}" for m in METRICS)
        print(f"{r['pair']:>12} {r['diff_mean']:9.3f} {r['diff_max']:8.0f} {r['fp32_s']:7.2f} {r[low + '_s']:7.2f}  {cells}")
    mean = {p: {m: float(np.mean([r[p][m] for r in rows])) for m in METRICS} for p in ("fp32", low)}
    print(f"{'mean':>12} {np.mean([r['diff_mean'] for r in rows]):9.3f} {max(r['diff_max'] for r in rows):8.0f} "
          f"{np.mean([r['fp32_s'] for r in rows]):7.2f} {np.mean([r[low + '_s'] for r in rows]):7.2f}  "
          + " ".join(f"{mean['fp32'][m]:9.4f}/{mean[low][m]:<10.4f}" for m in METRICS))
    drift = {m: max(abs(r[low][m] - r["fp32"][m]) / max(abs(r["fp32"][m]), 1e-12) for r in rows) for m in METRICS}
    print("largest relative metric change per pair: " + ", ".join(f"{m} {v:.2%}" for m, v in drift.items()))
    print(f"(grey levels of the 8-bit outputs; {len(rows)} pairs; threads {args.threads}; the first fusion of a run "
          "includes one-time costs)")


if __name__ == "__main__":
    main()
