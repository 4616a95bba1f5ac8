"""The `fusionmamba` command: fuse, evaluate, compare and train.

  fusionmamba fuse VIS.png IR.png -o fused.png --weights run/final
  fusionmamba fuse --a-dir vi/ --b-dir ir/ -o fused/ --method laplacian
  fusionmamba evaluate --a-dir vi/ --b-dir ir/ --fused-dir fused/ --csv scores.csv
  fusionmamba compare --data val/ --task ir-vis -o report/ --methods average max laplacian model
  fusionmamba train --data MSRS/ --task ir-vis -o run/
  torchrun --nproc_per_node 4 -m fusionmamba_triton train --data MSRS/ -o run/

Inputs: a is the visible / MRI / phase-contrast image (the model's x1), b the infrared / CT /
PET / SPECT / GFP one (x2). Errors print one line on stderr and exit non-zero; outputs are
written whole or not at all.

The error boundary of `fuse` and `evaluate` is the pair: a pair that cannot be read, fused or
scored (or a file without a partner) is reported in one line naming its files, the other pairs
still run, and the exit status is 1 if any failed.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import sys
import warnings
from pathlib import Path

from .baselines import BASELINES
from .data import TASKS, find_pairs, find_task_dirs, list_images
from .errors import CLIError, describe_error
from .files import atomic_write
from .imaging import IMAGE_EXTENSIONS, load_image, max_image_pixels, set_max_image_pixels
from .inference import AUTOCAST_DTYPES, COLOUR_SOURCES
from .layers.ablation import VARIANT_NAMES
from .losses import PRESETS as LOSS_PRESETS
from .model import PRESETS
from .ops import BACKENDS

METHODS = ("model",) + BASELINES


class PairFailures:
    """The error boundary of a batch: run each pair inside `pair(key, *paths)`; an exception there is
    reported as one line on stderr and recorded, and the batch goes on."""

    def __init__(self, command: str):
        self.command = command
        self.failed: dict[str, str] = {}

    @contextlib.contextmanager
    def pair(self, key: str, *paths):
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - one bad pair must not stop the batch
            self.report(key, describe_error(exc, paths))

    def report(self, key: str, message: str) -> None:
        from tqdm import tqdm

        self.failed[key] = message
        tqdm.write(f"fusionmamba {self.command}: error: {message}", file=sys.stderr)

    def report_unmatched(self, unmatched, a_dir: Path, b_dir: Path) -> None:
        for path in unmatched:
            other = b_dir if Path(path).parent == Path(a_dir) else a_dir
            self.report(str(path), f"{path}: no image named {Path(path).stem} in {other}, skipped")


def _add_task_args(p: argparse.ArgumentParser, paired_dirs: bool = True) -> None:
    p.add_argument("--task", choices=sorted(TASKS), default=None,
                   help="fusion task: picks the colour source and the folder names looked for under --data "
                        "(ir-vis: a=vi, b=ir; ct-mri / pet-mri / spect-mri: a=MRI, b=CT/PET/SPECT; gfp-pc: a=PC, b=GFP)")
    if paired_dirs:
        p.add_argument("--a-dir", type=Path, help="folder of a images (visible / MRI / phase contrast)")
        p.add_argument("--b-dir", type=Path, help="folder of b images (infrared / CT / PET / SPECT / GFP), paired by file name")
        p.add_argument("--data", type=Path, help="dataset root holding the task's folders (e.g. MSRS with ir/ and vi/)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", help="checkpoint: .safetensors / .pth file, a folder written by save_pretrained, or a training last.pt")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="model configuration (default: read from the checkpoint)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--backend", choices=BACKENDS, default="auto")


def _add_precision_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", "--dtype", choices=tuple(AUTOCAST_DTYPES), default="fp32",
                   help="fp32, or the model's matrix products in bf16 (CPUs with AVX512-BF16 or AMX, and GPUs) or fp16 "
                        "(GPUs) under autocast; norms, the scan and the output head stay fp32")


def _add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: OMP_NUM_THREADS if set, else as many as there are idle cores: a thread "
                        "sharing a busy core stalls every other one, see README 'Threads')")


def _set_threads(args, apply: bool = True) -> None:
    """Resolve --threads (or the automatic choice) into args.threads, and set it unless apply=False."""
    from .threads import choose_threads

    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads must be at least 1, got {args.threads}")
    args.threads = choose_threads(args.threads)
    if apply:
        import torch

        torch.set_num_threads(args.threads)


def _add_max_pixels_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-pixels", type=int, default=None,
                   help=f"read images of up to this many pixels (default {max_image_pixels() or 0:,}, Pillow's guard "
                        "against decompression bombs); raise it only for images you trust, and fuse them with --tile")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusionmamba", description="FusionMamba multimodal image fusion")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fuse", help="fuse one image pair or two folders of pairs")
    p.add_argument("a", nargs="?", type=Path, help="a image (visible / MRI)")
    p.add_argument("b", nargs="?", type=Path, help="b image (infrared / CT / PET / SPECT)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output file (one pair) or folder (folders)")
    _add_task_args(p)
    _add_model_args(p)
    p.add_argument("--method", choices=METHODS, default="model", help="FusionMamba or a classical baseline")
    _add_precision_arg(p)
    _add_threads_arg(p)
    p.add_argument("--tile", type=int, default=None, help="fuse in overlapping tiles of this size (multiple of 32) to save memory")
    p.add_argument("--overlap", type=int, default=None, help="tile overlap in pixels, at most tile/2 (default min(64, tile/4))")
    _add_max_pixels_arg(p)
    p.add_argument("--colour-source", choices=COLOUR_SOURCES, default=None,
                   help="whose colour the output keeps (default: the task's, else whichever input is colour)")
    p.add_argument("--ext", default=".png", help="output file type for folders (default .png)")
    p.add_argument("--allow-untrained", action="store_true",
                   help="run a randomly initialised model when no weights are available (smoke tests only)")

    p = sub.add_parser("evaluate", help="score fused images against their sources")
    _add_task_args(p)
    p.add_argument("--fused-dir", type=Path, required=True, help="folder of fused images, named like the pairs")
    p.add_argument("--metrics", nargs="+", default=None, help="metric names (default: all)")
    p.add_argument("--convention", default="canonical", help="metric convention (see fusionmamba_triton.metrics.CONVENTIONS)")
    p.add_argument("--csv", type=Path, help="write per-image scores and the mean as CSV")
    p.add_argument("--json", type=Path, help="write per-image scores and the mean as JSON")
    p.add_argument("--sheet", type=Path, help="write a contact sheet PNG (A | B | fused, one row per pair)")
    p.add_argument("--max-rows", type=int, default=None, help="at most this many pairs on the sheet (evenly spaced)")
    _add_max_pixels_arg(p)

    p = sub.add_parser("compare", help="fuse pairs with several methods, score them, write a contact sheet and a report")
    _add_task_args(p)
    p.add_argument("-o", "--out-dir", type=Path, required=True,
                   help="folder for sheet.png, report.html (+ thumbs/), scores.json and scores.csv")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=["average", "max", "laplacian", "model"],
                   help="columns; 'model' is one column per --weights entry (default: the task's bundled weights)")
    p.add_argument("--weights", nargs="+", action="extend", metavar="[NAME=]PATH",
                   help="checkpoint(s) for the model column(s), e.g. --weights old=run1/final new=run2/best")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="model configuration (default: read from the checkpoint)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--tile", type=int, default=None, help="fuse in overlapping tiles of this size (multiple of 32)")
    p.add_argument("--overlap", type=int, default=None, help="tile overlap in pixels, at most tile/2 (default min(64, tile/4))")
    p.add_argument("--colour-source", choices=COLOUR_SOURCES, default=None,
                   help="whose colour the fused images keep (default: the task's, else whichever input is colour)")
    p.add_argument("--metrics", nargs="+", default=None,
                   help="metric names (default: vif scd qabf sf ms_ssim fmi ssim psnr)")
    p.add_argument("--convention", default="canonical", help="metric convention (see fusionmamba_triton.metrics.CONVENTIONS)")
    p.add_argument("--max-rows", type=int, default=None, help="at most this many pairs on the sheet (evenly spaced)")
    p.add_argument("--thumb-height", type=int, default=256, help="height of the sheet thumbnails in pixels")
    p.add_argument("--save-fused", action="store_true", help="also write the fused images to OUT/fused/<method>/")
    p.add_argument("--title", default=None, help="report title (default: the task and folders)")
    _add_threads_arg(p)
    _add_precision_arg(p)
    _add_max_pixels_arg(p)

    p = sub.add_parser("train", help="train on paired folders (runs under torchrun as DDP)")
    _add_task_args(p)
    p.add_argument("-o", "--out-dir", type=Path, default=Path("runs/fusionmamba"), help="checkpoints, log.jsonl and final/")
    p.add_argument("--preset", choices=sorted(PRESETS), default="base")
    p.add_argument("--model-config", default=None, help="JSON object (or a .json file) overriding the preset's constructor arguments")
    p.add_argument("--weights", default=None, help="initialise from these weights")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="total optimiser steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=2, help="per process")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--schedule", choices=("official", "cosine", "constant"), default="official",
                   help="official: lr * 0.75^(epoch-1)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--crop", type=int, default=None, help="random square crops of this size (default 256)")
    size.add_argument("--resize", type=int, default=None, help="resize whole images to this square size instead (the official recipe: 256)")
    p.add_argument("--no-augment", action="store_true", help="no random flips / rotations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loss", choices=tuple(LOSS_PRESETS), default="official")
    p.add_argument("--loss-weights", nargs="+", default=[], metavar="TERM=WEIGHT",
                   help="replace the loss preset's weight of these terms, e.g. int=2 ssim=10 (terms: int, text, ssim; "
                        "vif, off in both presets, adds 2 - VIF of the output)")
    p.add_argument("--loss-without", nargs="+", choices=("int", "text", "ssim"), default=[], metavar="TERM",
                   help="leave these loss terms out (int, text, ssim): the paper's loss ablation (Table 8)")
    p.add_argument("--variant", choices=VARIANT_NAMES, default=None,
                   help="train a structure ablation of the paper's Table 7 instead of the full model: " + ", ".join(VARIANT_NAMES))
    p.add_argument("--checkpoint-every", type=int, default=1000, help="write OUT/last.pt every N steps")
    p.add_argument("--resume", default=None, help="checkpoint to resume from, or 'auto' for OUT/last.pt")
    p.add_argument("--val-a", type=Path, help="validation a image or folder")
    p.add_argument("--val-b", type=Path, help="validation b image or folder")
    p.add_argument("--val-every", type=int, default=1000)
    p.add_argument("--val-metrics", nargs="+", default=["vif", "qabf", "ssim"])
    p.add_argument("--keep-best", default=None, metavar="METRIC[,METRIC...]",
                   help="keep OUT/best/: the checkpoint with the best mean ratio of these val metrics to average "
                        "fusion's ('all': every --val-metrics)")
    p.add_argument("--loss-on", choices=("clamped", "unclamped"), default="clamped",
                   help="clamped (official): loss on the output clipped to [0, 1]; unclamped: on the raw output, "
                        "so blown-out pixels get a gradient")
    p.add_argument("--cache-images", action="store_true", help="decode the training pairs once and keep them in memory")
    _add_threads_arg(p)
    p.add_argument("--amp", choices=("none", "fp16", "bf16"), default="none",
                   help="mixed precision: bf16 on CPUs (AVX512-BF16 or AMX) and GPUs, fp16 on GPUs")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--workers", type=int, default=2, help="data-loader processes")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--weights-digest", action="store_true",
                   help="each process writes OUT/weights_rank<r>.sha256 of its final weights (checks DDP replicas agree)")
    return parser


def _pair_dirs(args) -> tuple[Path, Path]:
    if args.data is not None:
        if args.a_dir is not None or args.b_dir is not None:
            raise CLIError("give either --data or --a-dir/--b-dir, not both")
        a_dir, b_dir, task = find_task_dirs(args.data, args.task, prefer="train" if args.command == "train" else "test")
        args.task = args.task or task
        return a_dir, b_dir
    if args.a_dir is None or args.b_dir is None:
        raise CLIError("give --a-dir and --b-dir (or --data ROOT)")
    return args.a_dir, args.b_dir


def _device(name: str):
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: no CUDA device is available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def _apply_max_pixels(args) -> None:
    if args.max_pixels is not None:
        if args.max_pixels < 1:
            raise CLIError(f"--max-pixels must be positive, got {args.max_pixels}")
        set_max_image_pixels(args.max_pixels)


def cmd_fuse(args) -> int:
    from tqdm import tqdm

    single = args.a is not None or args.b is not None
    if single and (args.a is None or args.b is None):
        raise CLIError("give both images A and B")
    if single and (args.a_dir or args.b_dir or args.data):
        raise CLIError("give either two images or --a-dir/--b-dir (--data), not both")
    if not args.ext.startswith("."):
        args.ext = "." + args.ext
    if args.ext.lower() not in IMAGE_EXTENSIONS:
        raise CLIError(f"--ext: unsupported image type {args.ext!r}; choose from {', '.join(IMAGE_EXTENSIONS)}")
    _check_tiling_args(args)
    _apply_max_pixels(args)
    if single:
        output = args.output / (args.a.stem + args.ext) if args.output.is_dir() else args.output
        jobs, unmatched = [(args.a.stem, args.a, args.b, output)], []
    else:
        a_dir, b_dir = _pair_dirs(args)
        pairs, unmatched = find_pairs(a_dir, b_dir)
        if args.output.exists() and not args.output.is_dir():
            raise CLIError(f"{args.output}: exists and is not a folder (two folders need an output folder)")
        jobs = [(stem, a, b, args.output / (stem + args.ext)) for stem, a, b in pairs]
    if single and not jobs[0][3].parent.is_dir():
        raise CLIError(f"{jobs[0][3].parent}: output folder does not exist")
    colour_source = args.colour_source or (TASKS[args.task].colour_source if args.task else "auto")

    if args.method == "model":
        from .inference import frozen, fuse, load_model

        device = _device(args.device)
        _set_threads(args)
        task = args.task or "ir-vis"
        model = load_model(args.weights, preset=args.preset, device=device, backend=args.backend,
                           allow_untrained=args.allow_untrained, task=task)
        if args.weights is None:
            _say_bundled("fuse", task, args.preset, given_task=args.task is not None)

        def fuser(a, b):
            return fuse(model, a, b, colour_source=colour_source, tile=args.tile, overlap=args.overlap,
                        autocast_dtype=args.precision, device=device)
    else:
        from .baselines import get_fuser

        baseline = get_fuser(args.method)

        def fuser(a, b):
            return baseline(a, b, colour_source=colour_source)

    from .imaging import save_image

    jobs[0][3].parent.mkdir(parents=True, exist_ok=True)
    failures = PairFailures("fuse")
    if not single:
        failures.report_unmatched(unmatched, a_dir, b_dir)
    with frozen(model) if args.method == "model" else contextlib.nullcontext():  # one modulated LDC weight for all pairs
        for stem, a_path, b_path, out_path in tqdm(jobs, desc="fuse", unit="pair", disable=len(jobs) < 2):
            with failures.pair(stem, a_path, b_path):
                save_image(out_path, fuser(load_image(a_path), load_image(b_path)))
    total = len(jobs) + len(unmatched)
    if failures.failed and total > 1:
        print(f"fusionmamba fuse: {len(failures.failed)} of {total} pairs failed", file=sys.stderr)
    return 1 if failures.failed else 0


def _check_tiling_args(args) -> None:
    if args.tile is not None:
        from .inference import check_tiling

        try:
            check_tiling(args.tile, args.overlap)
        except ValueError as exc:
            raise CLIError(f"--tile / --overlap: {exc}") from None


def _say_bundled(command: str, task: str, preset: str | None, given_task: bool) -> None:
    """One stderr line naming the bundled checkpoint that load_model(None, ...) used, if it used one."""
    from .inference import bundled_weights
    from .model import BUNDLED_CHECKPOINTS

    folder, name = bundled_weights(task, preset)
    if folder is not None:
        which = task if given_task else f"{task} (the default; pass --task)"
        print(f"fusionmamba {command}: using the bundled checkpoint {name!r} for {which}: {BUNDLED_CHECKPOINTS[name]}",
              file=sys.stderr)


def cmd_evaluate(args) -> int:
    from .metrics import CONVENTIONS, UndefinedMetricWarning, evaluate

    names = args.metrics
    _check_metric_names("--metrics", names or [])
    if args.convention not in CONVENTIONS:
        raise CLIError(f"--convention: unknown convention {args.convention!r}; choose from {', '.join(CONVENTIONS)}")
    _apply_max_pixels(args)
    a_dir, b_dir = _pair_dirs(args)
    pairs, unmatched = find_pairs(a_dir, b_dir)
    fused_images = list_images(args.fused_dir)
    if args.sheet is not None:
        from .report import PairResult, thumbnail, write_sheet

        if args.max_rows is not None and args.max_rows < 1:
            raise CLIError(f"--max-rows must be at least 1, got {args.max_rows}")
        sheet_rows, fused_label = [], args.fused_dir.name or "fused"
    scores: dict[str, dict[str, float]] = {}
    too_small: dict[str, list[str]] = {}  # metric -> images it is NaN for
    reasons: dict[str, str] = {}
    failures = PairFailures("evaluate")
    failures.report_unmatched(unmatched, a_dir, b_dir)
    for stem, a_path, b_path in pairs:
        fused_path = fused_images.get(stem)
        with failures.pair(stem, a_path, b_path, *([fused_path] if fused_path else [])):
            if fused_path is None:
                raise ValueError(f"{args.fused_dir}: no fused image named {stem}")
            a, b, f = (load_image(p) * 255.0 for p in (a_path, b_path, fused_path))
            if not a.shape[:2] == b.shape[:2] == f.shape[:2]:
                raise ValueError(f"{fused_path}: sizes differ (a {a.shape}, b {b.shape}, fused {f.shape})")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UndefinedMetricWarning)
                result = evaluate(a, b, f, metrics=names, convention=args.convention)
            for w in caught:
                if isinstance(w.message, UndefinedMetricWarning):
                    for metric, reason in w.message.reasons.items():
                        too_small.setdefault(metric, []).append(stem)
                        reasons[metric] = reason
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            scores[stem] = {k: float(v) for k, v in result.items()}
            if args.sheet is not None:
                sheet_rows.append(PairResult(stem, {"A": thumbnail(a / 255.0), "B": thumbnail(b / 255.0),
                                                    fused_label: thumbnail(f / 255.0)}, {fused_label: scores[stem]}))
    if not scores:
        raise CLIError("no image could be evaluated")
    columns = list(next(iter(scores.values())))
    mean = {c: _mean_of_defined([s[c] for s in scores.values()]) for c in columns}
    print(_table(scores, mean, columns))
    if too_small:
        listed = "; ".join(f"{metric} on {len(stems)} of {len(scores)} image(s) ({', '.join(stems[:5])}"
                           f"{', ...' if len(stems) > 5 else ''}): {reasons[metric]}" for metric, stems in too_small.items())
        print(f"fusionmamba evaluate: warning: NaN where an image is too small, left out of the mean: {listed}",
              file=sys.stderr)
    if args.csv is not None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["image"] + columns)
        for stem, s in scores.items():
            writer.writerow([stem] + [repr(s[c]) for c in columns])
        writer.writerow(["mean"] + [repr(mean[c]) for c in columns])
        atomic_write(args.csv, lambda f: f.write(buffer.getvalue()), mode="w")
    if args.json is not None:
        report = {"convention": args.convention, "metrics": columns, "images": _nan_to_none(scores),
                  "mean": _nan_to_none(mean), "failed": failures.failed}
        atomic_write(args.json, lambda f: json.dump(report, f, indent=2, allow_nan=False), mode="w")
    if args.sheet is not None:
        write_sheet(args.sheet, sheet_rows, {"A": f"A: {a_dir.name}", "B": f"B: {b_dir.name}"}, max_rows=args.max_rows)
    if failures.failed:
        print(f"fusionmamba evaluate: {len(failures.failed)} of {len(pairs) + len(unmatched)} pairs failed",
              file=sys.stderr)
    return 1 if failures.failed else 0


def _mean_of_defined(values: list[float]) -> float:
    """Mean over the values that are not NaN (NaN if none is)."""
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else float("nan")


def _nan_to_none(tree):
    """JSON has no NaN or infinity: such scores (undefined, or PSNR of identical images) are written as null."""
    if isinstance(tree, dict):
        return {k: _nan_to_none(v) for k, v in tree.items()}
    return None if isinstance(tree, float) and not math.isfinite(tree) else tree


def cmd_compare(args) -> int:
    from .metrics import CONVENTIONS
    from .report import DEFAULT_METRICS, compare, format_table, mean_scores, method_fusers, parse_weights, write_report

    metrics = args.metrics or list(DEFAULT_METRICS)
    _check_metric_names("--metrics", metrics)
    if args.convention not in CONVENTIONS:
        raise CLIError(f"--convention: unknown convention {args.convention!r}; choose from {', '.join(CONVENTIONS)}")
    for option, value, low in (("--max-rows", args.max_rows, 1), ("--thumb-height", args.thumb_height, 16)):
        if value is not None and value < low:
            raise CLIError(f"{option} must be at least {low}, got {value}")
    _check_tiling_args(args)
    _apply_max_pixels(args)
    _set_threads(args)
    a_dir, b_dir = _pair_dirs(args)
    pairs, unmatched = find_pairs(a_dir, b_dir)
    task = args.task or "ir-vis"
    colour_source = args.colour_source or (TASKS[args.task].colour_source if args.task else "auto")
    weights = parse_weights(args.weights)
    fusers, sources = method_fusers(args.methods, weights, task=task, colour_source=colour_source, preset=args.preset,
                                    device=_device(args.device), backend=args.backend, tile=args.tile,
                                    overlap=args.overlap, autocast_dtype=args.precision)
    if "model" in args.methods and not weights:
        _say_bundled("compare", task, args.preset, given_task=args.task is not None)
    unmatched_failures = PairFailures("compare")
    unmatched_failures.report_unmatched(unmatched, a_dir, b_dir)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results, failures = compare(
        pairs, fusers, metrics, args.convention, thumb_height=args.thumb_height,
        save_dir=args.out_dir / "fused" if args.save_fused else None, progress=len(pairs) > 1,
        on_error=lambda message: print(f"fusionmamba compare: error: {message}", file=sys.stderr),
    )
    failures = {**unmatched_failures.failed, **failures}
    if not results:
        raise CLIError("no pair could be compared")
    title = args.title or f"{args.task or 'fusion'}: {a_dir} + {b_dir}"
    titles = {"A": f"A: {a_dir.name}", "B": f"B: {b_dir.name}"}
    paths = write_report(args.out_dir, results, failures, convention=args.convention, title=title,
                         titles=titles, sources=sources, max_rows=args.max_rows)
    print(format_table(mean_scores(results)))
    print(f"{len(results)} pairs; wrote {', '.join(str(p) for p in paths.values())}")
    if failures:
        print(f"fusionmamba compare: {len(failures)} of {len(pairs) + len(unmatched)} pairs failed", file=sys.stderr)
    return 1 if failures else 0


def _check_metric_names(option: str, names) -> None:
    from .metrics import ALIASES, METRICS

    unknown = [m for m in names if m not in METRICS and m not in ALIASES]
    if unknown:
        raise CLIError(f"{option}: unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS + tuple(ALIASES))}")


def _table(scores: dict, mean: dict, columns: list[str]) -> str:
    rows = [["image"] + columns] + [[stem] + [f"{s[c]:.4f}" for c in columns] for stem, s in scores.items()]
    rows.append(["mean"] + [f"{mean[c]:.4f}" for c in columns])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths))) for r in rows)


def _val_pairs(a: Path | None, b: Path | None) -> list:
    if a is None and b is None:
        return []
    if a is None or b is None:
        raise CLIError("give both --val-a and --val-b")
    if a.is_dir() or b.is_dir():
        return [(pa, pb) for _, pa, pb in find_pairs(a, b)[0]]
    for path in (a, b):
        if not path.is_file():
            raise CLIError(f"{path}: no such file")
    return [(a, b)]


def _loss_weights(items) -> dict:
    weights = {}
    for item in items:
        term, sep, value = item.partition("=")
        try:
            weights[term] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise CLIError(f"--loss-weights: expected TERM=WEIGHT (e.g. int=2), got {item!r}")
    return weights


def cmd_train(args) -> int:
    from .train import TrainConfig, train

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # torchrun's processes keep their own thread counts
        _set_threads(args, apply=False)  # train() sets it for the run and restores it after
    a_dir, b_dir = _pair_dirs(args)
    _check_metric_names("--val-metrics", args.val_metrics)
    keep_best = ()
    if args.keep_best is not None:
        keep_best = tuple(args.val_metrics) if args.keep_best == "all" else tuple(filter(None, args.keep_best.split(",")))
        _check_metric_names("--keep-best", keep_best or [args.keep_best])
    model_config = {}
    if args.model_config:
        text = Path(args.model_config).read_text() if args.model_config.endswith(".json") else args.model_config
        try:
            model_config = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CLIError(f"--model-config: not valid JSON ({exc})") from None
        if not isinstance(model_config, dict):
            raise CLIError("--model-config: expected a JSON object of constructor arguments")
    config = TrainConfig(
        a_dir=str(a_dir), b_dir=str(b_dir), out_dir=str(args.out_dir), preset=args.preset, model_config=model_config,
        init_weights=args.weights, epochs=args.epochs, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        schedule=args.schedule, crop=None if args.resize else (args.crop or 256), resize=args.resize,
        augment=not args.no_augment, seed=args.seed, loss=args.loss, loss_without=tuple(args.loss_without),
        loss_weights=_loss_weights(args.loss_weights),
        variant=args.variant, checkpoint_every=args.checkpoint_every,
        resume=args.resume, val_pairs=_val_pairs(args.val_a, args.val_b), val_every=args.val_every,
        val_metrics=tuple(args.val_metrics), keep_best=keep_best, loss_on=args.loss_on, cache_images=args.cache_images,
        threads=args.threads, amp=args.amp, device=args.device, backend=args.backend,
        num_workers=args.workers, log_every=args.log_every, weights_digest=args.weights_digest,
    )
    result = train(config)
    if result["checkpoint"]:
        print(f"step {result['step']}: loss {result['loss']:.4f}; checkpoint {result['checkpoint']}, "
              f"weights {Path(config.out_dir) / 'final'}")
    return 0


COMMANDS = {"fuse": cmd_fuse, "evaluate": cmd_evaluate, "compare": cmd_compare, "train": cmd_train}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (CLIError, ValueError, OSError) as exc:
        print(f"fusionmamba {args.command}: error: {describe_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fusionmamba: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
