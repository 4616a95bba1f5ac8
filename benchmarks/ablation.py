"""The paper's ablations (Tables 7 and 8): train every structure variant and every loss ablation with
one recipe and budget, score each on the validation split, and print both tables in the paper's
layout next to the paper's numbers.

    python benchmarks/ablation.py --quick          # a smoke run: a few steps each, minutes on one CPU thread
    python benchmarks/ablation.py --data ../shared/data/train --task ir-vis --preset small \\
        --steps 2000 --crop 128 --batch-size 4 --threads 2 --out runs/ablation --resume

Rows (9 trainings): Table 7 replaces or removes one part of the network (FusionMamba's `variant`:
dvss_to_evss, dvss_to_transformer, dffm_to_dvss, no_dfem, no_cmfm); Table 8 leaves one term out
of the loss (`FusionLoss(..., without=(term,))`: ssim, int, text); the full model is the last row
of both. Every run calls `fusionmamba_triton.train.train` with the same TrainConfig except for the
variant / loss term, so changes of the package's training recipe apply here too; `--recipe`
overrides any other TrainConfig field (e.g. '{"lr": 1e-3, "schedule": "cosine"}').

Data: --data holds the task's train and val folders (found by name like `fusionmamba train
--data`: e.g. ir-vis/train/{vi,ir} and ir-vis/val/{vi,ir}); training never sees the val pairs.
Each trained model fuses every val pair at its own size and is scored with the package's metrics
(canonical convention, 0-255, on Y): VIF, SCD, Q^AB/F, SF, MS-SSIM, FMI (edge features).

Output under --out: one folder per run (the trainer's last.pt, log.jsonl, final/ and the run's
result.json) and ablation.json (everything printed, plus per-image scores). With --resume, runs
whose result.json exists are not trained again, and an interrupted run continues from its last.pt.

The paper's rows are IR-VIS results of its base model trained on KAIST (the full-model row of
both tables is Table 4's FusionMamba row), scored on its own test images with its own metric
code: only the direction of each change relative to the full model compares with ours.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "train"

METRICS = ("vif", "scd", "qabf", "sf", "ms_ssim", "fmi_edge")
HEADERS = ("VIF", "SCD", "Q^AB/F", "SF", "MS-SSIM", "FMI")

# The paper's published numbers (VIF, SCD, Q^AB/F, SF, MS-SSIM, FMI), rows as printed.
PAPER_TABLE7 = {  # "Table 7. The ablation of network structure."
    "DVSS→EVSS": (0.6809, 1.7917, 0.5086, 16.8729, 0.9006, 0.8625),
    "DVSS→Transformer": (0.6701, 1.7329, 0.5014, 16.7061, 0.8812, 0.8334),
    "DFFM→DVSS": (0.7334, 1.7881, 0.5220, 16.9880, 0.8990, 0.8417),
    "w/o DFEM": (0.7459, 1.7412, 0.5129, 16.6911, 0.8774, 0.8719),
    "w/o CMFM": (0.7016, 1.7615, 0.5231, 16.7907, 0.8895, 0.8751),
    "FusionMamba": (0.7717, 1.8314, 0.5468, 17.0171, 0.9331, 0.8858),
}
PAPER_TABLE8 = {  # "Table 8. The ablation of Loss Function." (SCD of w/o L_ssim is printed "1,6773")
    "w/o L_ssim": (0.7702, 1.6773, 0.5501, 15.7055, 0.8260, 0.8802),
    "w/o L_int": (0.6673, 1.8216, 0.5448, 15.6387, 0.8994, 0.8804),
    "w/o L_text": (0.5235, 1.8283, 0.4604, 15.0716, 0.9158, 0.8862),
    "FusionMamba": (0.7717, 1.8314, 0.5468, 17.0171, 0.9331, 0.8858),
}


@dataclasses.dataclass(frozen=True)
class Run:
    name: str  # also the run's folder
    table: int  # 7 or 8; the full model is in both
    row: str  # the paper's row name
    variant: str | None = None
    loss_without: tuple = ()


RUNS = (
    Run("dvss_to_evss", 7, "DVSS→EVSS", variant="dvss_to_evss"),
    Run("dvss_to_transformer", 7, "DVSS→Transformer", variant="dvss_to_transformer"),
    Run("dffm_to_dvss", 7, "DFFM→DVSS", variant="dffm_to_dvss"),
    Run("no_dfem", 7, "w/o DFEM", variant="no_dfem"),
    Run("no_cmfm", 7, "w/o CMFM", variant="no_cmfm"),
    Run("without_ssim", 8, "w/o L_ssim", loss_without=("ssim",)),
    Run("without_int", 8, "w/o L_int", loss_without=("int",)),
    Run("without_text", 8, "w/o L_text", loss_without=("text",)),
    Run("full", 0, "FusionMamba"),
)
RUN_NAMES = tuple(r.name for r in RUNS)
# Fields set per run or by the options below; --recipe may set any other TrainConfig field.
_CONTROLLED = {"a_dir", "b_dir", "out_dir", "variant", "loss_without", "val_pairs"}

QUICK = dict(preset="small", steps=10, crop=64, batch_size=2, val_limit=3, threads=1, device="cpu")
FULL = dict(preset="small", steps=2000, crop=128, batch_size=4, val_limit=None, threads=None, device="auto")


def parse_args(argv=None) -> argparse.Namespace:
    from fusionmamba_triton.model import PRESETS
    from fusionmamba_triton.ops import BACKENDS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()) + " (explicit options win)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"folder holding the task's train/ and val/ pairs (default {DEFAULT_DATA})")
    p.add_argument("--val-data", type=Path, default=None, help="folder of the val pairs, when they are not under --data")
    p.add_argument("--task", default="ir-vis", help="fusion task (the paper's ablations are IR-VIS)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help=f"model size (default {FULL['preset']})")
    p.add_argument("--steps", type=int, default=None, help=f"optimiser steps per run (default {FULL['steps']})")
    p.add_argument("--crop", type=int, default=None, help=f"training crop, a multiple of 32 (default {FULL['crop']})")
    p.add_argument("--batch-size", type=int, default=None, help=f"default {FULL['batch_size']}")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: TrainConfig's)")
    p.add_argument("--schedule", choices=("official", "cosine", "constant"), default=None, help="default: TrainConfig's")
    p.add_argument("--loss", choices=("paper", "official"), default="paper",
                   help="loss preset of every run; Table 8 leaves out one of its terms (default paper: the ablated loss)")
    p.add_argument("--recipe", default=None, help="JSON object (or a .json file) of further TrainConfig fields for every run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; --quick: 1)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--val-limit", type=int, default=None, help="score only the first N val pairs (default: all; --quick: 3)")
    p.add_argument("--only", nargs="+", choices=RUN_NAMES, default=None, metavar="RUN",
                   help="train and print only these runs: " + ", ".join(RUN_NAMES))
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/ablation, --quick: runs/ablation-quick)")
    p.add_argument("--resume", action="store_true", help="skip runs whose result.json exists; continue interrupted ones")
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None:
        args.out = Path("runs/ablation-quick" if args.quick else "runs/ablation")
    args.recipe = _read_recipe(p, args.recipe)
    if args.val_limit is not None and args.val_limit < 1:
        p.error("--val-limit must be at least 1")
    return args


def _read_recipe(parser, text):
    from fusionmamba_triton.train import TrainConfig

    if text is None:
        return {}
    if text.endswith(".json"):
        text = Path(text).read_text()
    try:
        recipe = json.loads(text)
    except json.JSONDecodeError as exc:
        parser.error(f"--recipe: not valid JSON ({exc})")
    if not isinstance(recipe, dict):
        parser.error("--recipe: expected a JSON object of TrainConfig fields")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(set(recipe) - fields) + sorted(set(recipe) & _CONTROLLED)
    if bad:
        parser.error(f"--recipe: cannot set {', '.join(bad)} (allowed: {', '.join(sorted(fields - _CONTROLLED))})")
    return recipe


def find_splits(args):
    """(train a_dir, b_dir, [(stem, a, b), ...] val pairs)."""
    from PIL import Image

    from fusionmamba_triton.data import check_pair_sizes, find_pairs, find_task_dirs
    from fusionmamba_triton.metrics.ssim_torch import ms_ssim_window_sizes

    train_a, train_b, _ = find_task_dirs(args.data, args.task, prefer="train")
    val_a, val_b, _ = find_task_dirs(args.val_data or args.data, args.task, prefer="val")
    if (val_a.resolve(), val_b.resolve()) == (train_a.resolve(), train_b.resolve()):
        raise ValueError(f"{args.data}: found one set of {args.task} folders ({train_a}, {train_b}) and no separate "
                         "val split; give a folder with train/ and val/ or --val-data")
    val_pairs = find_pairs(val_a, val_b)[0][: args.val_limit]
    check_pair_sizes(val_pairs)
    for _, a_path, _ in val_pairs:  # fail before training, not after: MS-SSIM needs a short side above 160 px
        with Image.open(a_path) as image:
            try:
                ms_ssim_window_sizes(image.height, image.width)
            except ValueError as exc:
                raise ValueError(f"{a_path}: too small to score ({exc})") from None
    return train_a, train_b, val_pairs


def train_config(args, run: Run, train_a, train_b):
    from fusionmamba_triton.train import TrainConfig

    fields = dict(preset=args.preset, steps=args.steps, crop=args.crop, batch_size=args.batch_size, seed=args.seed,
                  loss=args.loss, device=args.device, backend=args.backend, num_workers=0, log_every=1,
                  checkpoint_every=max(1, min(args.steps, 500)))
    fields.update({k: v for k, v in (("lr", args.lr), ("schedule", args.schedule)) if v is not None})
    fields.update(args.recipe)
    return TrainConfig(a_dir=str(train_a), b_dir=str(train_b), out_dir=str(args.out / run.name), variant=run.variant,
                       loss_without=run.loss_without, resume="auto" if args.resume else None, **fields)


def score(model, val_pairs) -> dict:
    """{stem: {metric: value}} over the val pairs (the trainer's own validation, one pair at a time)."""
    from fusionmamba_triton.train import load_val_images, validate

    images = load_val_images([(a, b) for _, a, b in val_pairs])
    return {stem: validate(model, [pair], METRICS) for (stem, _, _), pair in zip(val_pairs, images)}


def run_one(args, run: Run, train_a, train_b, val_pairs) -> dict:
    import torch

    from fusionmamba_triton.files import atomic_write
    from fusionmamba_triton.model import FusionMamba
    from fusionmamba_triton.train import train

    folder = args.out / run.name
    result_path = folder / "result.json"
    if args.resume and result_path.is_file():
        result = json.loads(result_path.read_text())
        result["skipped"] = True
        return result
    config = train_config(args, run, train_a, train_b)
    if not args.resume:  # a fresh run: drop the log of an earlier one so the losses below are this run's
        (folder / "log.jsonl").unlink(missing_ok=True)
    start = time.perf_counter()
    last = train(config)
    train_s = time.perf_counter() - start
    model = FusionMamba.from_pretrained(folder / "final", backend=args.backend)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    model.to(device)
    start = time.perf_counter()
    per_image = score(model, val_pairs)
    score_s = time.perf_counter() - start
    mean = {m: sum(s[m] for s in per_image.values()) / len(per_image) for m in METRICS}
    result = {
        "run": run.name, "table": run.table, "row": run.row, "variant": run.variant, "loss_without": list(run.loss_without),
        "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "steps": last["step"], "train_seconds": round(train_s, 1), "score_seconds": round(score_s, 1),
        "final_loss": _final_loss(folder / "log.jsonl"), "mean": mean, "per_image": per_image,
        "config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),
    }
    atomic_write(result_path, lambda f: json.dump(result, f, indent=2), mode="w")
    return result


def _final_loss(log_path: Path):
    """Mean of each logged loss term over the last 10% of the steps (at least the last one)."""
    if not log_path.is_file():
        return None
    records = [r for r in map(json.loads, log_path.read_text().splitlines()) if "loss" in r]
    if not records:
        return None
    tail = records[-max(1, len(records) // 10):]
    return {k: sum(r[k] for r in tail) / len(tail) for k in ("loss", "intensity", "texture", "ssim") if k in tail[0]}


# ---------------------------------------------------------------------- tables
def _fmt(value: float, metric: str) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.2f}" if metric == "sf" else f"{value:.4f}"


def table_rows(results: dict, table: int) -> list[dict]:
    """The paper's rows of one table, in its order, each with our mean (or None) and the paper's numbers."""
    paper = PAPER_TABLE7 if table == 7 else PAPER_TABLE8
    by_row = {r.row: r.name for r in RUNS if r.table in (table, 0)}
    rows = []
    for row, numbers in paper.items():
        result = results.get(by_row[row])
        rows.append({"method": row, "run": by_row[row], "ours": result["mean"] if result else None,
                     "paper": dict(zip(METRICS, numbers))})
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| Method | " + " | ".join(f"{h} ours / paper" for h in HEADERS) + " |",
             "|---|" + "---|" * len(HEADERS)]
    for row in rows:
        ours = row["ours"] or {}
        cells = [f"{_fmt(ours.get(m), m)} / {_fmt(row['paper'][m], m)}" for m in METRICS]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def direction_agreement(rows: list[dict]) -> dict | None:
    """How many (ablation row, metric) changes relative to the full model have the paper's sign."""
    full = rows[-1]
    if full["ours"] is None:
        return None
    agree = total = 0
    for row in rows[:-1]:
        if row["ours"] is None:
            continue
        for m in METRICS:
            ours = row["ours"][m] - full["ours"][m]
            paper = row["paper"][m] - full["paper"][m]
            total += 1
            agree += (ours > 0) == (paper > 0) and ours != 0
    return {"agree": agree, "of": total}


def budget_note(args, results: dict, n_val: int) -> str:
    trained = [r for r in results.values() if not r.get("skipped")]
    seconds = [r["train_seconds"] for r in results.values()]
    spent = (f"{min(seconds):.0f}-{max(seconds):.0f} s" if max(seconds) < 120
             else f"{min(seconds) / 60:.1f}-{max(seconds) / 60:.1f} min")
    params = {r["parameters"] for r in results.values()}
    where = f"{args.device} ({platform.machine()}, torch threads: {args.threads or 'default'})"
    return "\n".join([
        f"Budget per run: {args.steps} steps x batch {args.batch_size} of {args.crop}x{args.crop} crops, preset "
        f"'{args.preset}' ({min(params) / 1e6:.2f}-{max(params) / 1e6:.2f} M trained parameters), loss '{args.loss}', "
        f"seed {args.seed}; {spent} of training per run on {where}"
        + (f" ({len(results) - len(trained)} run(s) read back from an earlier session)" if len(trained) < len(results) else "")
        + f". Scored on {n_val} val pair(s) of '{args.task}'.",
        "The paper trained its base model on 70,000 KAIST pairs at 256x256 (batch 4, lr 1e-4) on an RTX 3090;",
        "it does not state the ablations' budget, and it scored its own IR-VIS test images with its own metric code.",
        "What this run can show: every variant and every loss ablation builds, trains and is scored end to end with one recipe.",
        "What it cannot show: whether the paper's ranking holds. A CPU budget is orders of magnitude below the paper's, so",
        "the rows differ mainly in how fast each network starts to learn, one seed and a handful of val pairs give",
        "differences of a few hundredths as noise, and absolute values are not comparable with the paper's columns.",
    ])


def summary_json(report: dict) -> str:
    """The printed JSON: budget, both tables as {method: {"ours": [...], "paper": [...]}} in HEADERS order."""
    def numbers(values):
        return None if values is None else [round(values[m], 4) for m in METRICS]

    summary = {"task": report["task"], "budget": report["budget"], "columns": list(HEADERS)}
    for name, rows in report["tables"].items():
        summary[name] = {row["method"]: {"ours": numbers(row["ours"]), "paper": numbers(row["paper"])} for row in rows}
    summary["direction_agreement"] = report["direction_agreement"]
    text = json.dumps(summary, indent=1, ensure_ascii=False)
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)  # lists on one line


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        train_a, train_b, val_pairs = find_splits(args)
        runs = [r for r in RUNS if args.only is None or r.name in args.only]
        print(f"ablation: {len(runs)} run(s) of {args.steps} steps on {train_a.parent} -> {args.out}; "
              f"{len(val_pairs)} val pair(s) from {val_pairs[0][1].parent.parent}", flush=True)
        results = {}
        for i, run in enumerate(runs, 1):
            result = run_one(args, run, train_a, train_b, val_pairs)
            results[run.name] = result
            state = ("read back (--resume)" if result.get("skipped") else
                     f"trained {result['steps']} steps in {result['train_seconds']:.1f} s, "
                     f"scored in {result['score_seconds']:.1f} s")
            print(f"[{i}/{len(runs)}] {run.name}: {state}", flush=True)
    except ValueError as exc:  # bad data or recipe: one line, as the fusionmamba command does
        print(f"ablation: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1

    tables = {"table7": table_rows(results, 7), "table8": table_rows(results, 8)}
    agreement = {name: direction_agreement(rows) for name, rows in tables.items()}
    note = budget_note(args, results, len(val_pairs))
    print()
    for name, title in (("table7", "Table 7. The ablation of network structure"), ("table8", "Table 8. The ablation of Loss Function")):
        print(f"{title} (ours on {args.task} val / the paper's)\n")
        print(markdown_table(tables[name]))
        if agreement[name]:
            a = agreement[name]
            print(f"\nChange relative to the full model in the paper's direction: {a['agree']} of {a['of']} (row, metric) "
                  "cells (a coin agrees in about half; the count means something only for converged runs).")
        print()
    print(note)

    report = {
        "task": args.task, "data": str(args.data), "val_pairs": [stem for stem, _, _ in val_pairs],
        "budget": {"preset": args.preset, "steps": args.steps, "crop": args.crop, "batch_size": args.batch_size,
                   "loss": args.loss, "seed": args.seed, "recipe": args.recipe, "threads": args.threads,
                   "device": args.device, "torch": torch.__version__, "machine": platform.platform()},
        "metrics": dict(zip(METRICS, HEADERS)), "tables": tables, "direction_agreement": agreement,
        "runs": {name: {k: v for k, v in r.items() if k != "per_image"} for name, r in results.items()},
        "per_image": {name: r["per_image"] for name, r in results.items()},
        "note": note,
    }
    from fusionmamba_triton.files import atomic_write

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "ablation.json", lambda f: json.dump(report, f, indent=2), mode="w")
    print("\n" + summary_json(report))
    print(f"\nablation: wrote {args.out / 'ablation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
