"""Comparing fusion methods on a folder of pairs: scores, a contact sheet and an HTML report.

    fusionmamba compare --data val/ --task ir-vis -o report/ --methods average max laplacian model

`compare` fuses every pair with each method and scores it with `metrics.evaluate`;
`write_report` writes into one folder sheet.png (columns A | B | each method, one row per pair),
report.html (the mean table, best value per metric highlighted, beside the sheet; then every
pair's thumbnails with its scores), scores.json and scores.csv. `write_sheet` alone makes the
sheet for already-fused images (`fusionmamba evaluate --sheet`).
"""
from __future__ import annotations

import csv
import dataclasses
import html
import io
import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import describe_error
from .files import atomic_write
from .imaging import load_image, save_image

# The paper's six, then the two the targets also name.
DEFAULT_METRICS = ("vif", "scd", "qabf", "sf", "ms_ssim", "fmi", "ssim", "psnr")
LOWER_IS_BETTER = frozenset({"nabf"})  # every other metric: higher is better
CAPTION_METRICS = ("vif", "qabf", "ms_ssim", "ssim")  # shown under each sheet thumbnail when scored
THUMB_HEIGHT = 256
REFERENCE_METHOD = "average"  # ratios to it are reported: the targets are relative to average fusion

_GAP = 6
_BACKGROUND = (255, 255, 255)
_TEXT = (20, 20, 20)
_BEST = (0, 120, 40)


@dataclasses.dataclass
class PairResult:
    """One pair's row: thumbnails per column ("A", "B", then each method) and scores per method."""

    name: str
    thumbs: dict[str, Image.Image]
    scores: dict[str, dict[str, float]]


def thumbnail(image: np.ndarray, height: int = THUMB_HEIGHT) -> Image.Image:
    """A (H, W) or (H, W, 3) float image in [0, 1] as an 8-bit PIL image `height` pixels high, colour kept.

    Downscaling is antialiased; upscaling repeats pixels, so texture such as a patch grid stays visible.
    """
    data = np.rint(np.asarray(image, dtype=np.float64).clip(0, 1) * 255.0).astype(np.uint8)
    picture = Image.fromarray(data)
    if picture.height == height:
        return picture
    width = max(1, round(picture.width * height / picture.height))
    filters = getattr(Image, "Resampling", Image)  # Pillow < 9.1 has the names on Image
    resample = filters.LANCZOS if picture.height > height else filters.NEAREST
    return picture.resize((width, height), resample)


def score(a: np.ndarray, b: np.ndarray, fused: np.ndarray, metrics, convention: str = "canonical") -> dict[str, float]:
    """Metrics of `fused` against its sources, all float in [0, 1] as load_image gives them.

    The fused image is scored as it would be saved (rounded to 8 bits), so the numbers equal
    `fusionmamba fuse` followed by `fusionmamba evaluate` on PNG files.
    """
    from .metrics import evaluate

    saved = np.rint(np.asarray(fused, dtype=np.float64).clip(0, 1) * 255.0)
    return {k: float(v) for k, v in evaluate(a * 255.0, b * 255.0, saved, metrics=list(metrics), convention=convention).items()}


def compare(pairs, fusers: dict[str, Callable], metrics=DEFAULT_METRICS, convention: str = "canonical",
            thumb_height: int = THUMB_HEIGHT, save_dir: str | Path | None = None,
            on_error: Callable[[str], None] | None = None, progress: bool = False):
    """Fuse and score each (name, a_path, b_path) pair with every fuser(a, b) -> image.

    Returns ([PairResult, ...], {name: error message}). A pair that cannot be read or fused is
    reported through on_error(message) and skipped. With `save_dir`, each fused image is also
    written to save_dir/<method>/<name>.png.
    """
    import torch
    from tqdm import tqdm

    results, failures = [], {}
    for name, a_path, b_path in tqdm(pairs, desc="compare", unit="pair", disable=not progress):
        try:
            a, b = load_image(a_path), load_image(b_path)
            thumbs = {"A": thumbnail(a, thumb_height), "B": thumbnail(b, thumb_height)}
            scores = {}
            for method, fuser in fusers.items():
                fused = fuser(a, b)
                if save_dir is not None:
                    (Path(save_dir) / method).mkdir(parents=True, exist_ok=True)
                    save_image(Path(save_dir) / method / f"{name}.png", fused)
                scores[method] = score(a, b, fused, metrics, convention)
                thumbs[method] = thumbnail(fused, thumb_height)
        except (ValueError, torch.cuda.OutOfMemoryError) as exc:
            message = describe_error(exc, (a_path, b_path))
            failures[name] = message
            if on_error is not None:
                on_error(message)
            continue
        results.append(PairResult(name, thumbs, scores))
    return results, failures


def parse_weights(specs) -> dict[str, str]:
    """`--weights` entries, each PATH or NAME=PATH, as name -> path.

    An unnamed entry is called "model" when it is the only one, else by its file or folder name.
    """
    named: dict[str, str] = {}
    specs = list(specs or [])
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or Path(spec).exists():
            name, path = ("model" if len(specs) == 1 else Path(spec).name), spec
        if not name or not path:
            raise ValueError(f"--weights {spec!r}: expected PATH or NAME=PATH")
        if name in named:
            raise ValueError(f"--weights: two checkpoints are called {name!r}; name them, e.g. run1={path}")
        named[name] = path
    return named


def method_fusers(methods, weights: dict[str, str], *, task: str = "ir-vis", colour_source: str = "auto",
                  preset: str | None = None, device="cpu", backend: str = "auto", **fuse_options):
    """({column name: fuser(a, b) -> image}, {model column: where its weights come from}) for `methods`.

    "model" stands for one column per entry of `weights` (name -> checkpoint), or for the task's
    bundled checkpoint when `weights` is empty; the other names are classical baselines.
    `fuse_options` (tile, overlap, autocast_dtype) go to inference.fuse.
    """
    from .baselines import BASELINES, get_fuser
    from .inference import bundled_weights, fuse, load_model

    if weights and "model" not in methods:
        raise ValueError("--weights was given but 'model' is not among the methods")
    clash = sorted(set(weights) & set(BASELINES))
    if clash:
        raise ValueError(f"--weights: {', '.join(clash)} is the name of a classical method; choose another")
    fusers, sources = {}, {}
    for method in dict.fromkeys(methods):
        if method != "model":
            baseline = get_fuser(method)
            fusers[method] = lambda a, b, f=baseline: f(a, b, colour_source=colour_source)
            continue
        if not weights:
            model = load_model(None, preset=preset, device=device, backend=backend, task=task)
            sources["model"] = f"bundled checkpoint {bundled_weights(task, preset)[1]!r}"
            checkpoints = {"model": model}
        else:
            checkpoints = {name: load_model(path, preset=preset, device=device, backend=backend)
                           for name, path in weights.items()}
            sources.update({name: str(path) for name, path in weights.items()})
        for name, model in checkpoints.items():
            fusers[name] = lambda a, b, m=model: fuse(m, a, b, colour_source=colour_source, device=device, **fuse_options)
    return fusers, sources


# ---------------------------------------------------------------------- tables
def mean_scores(results: list[PairResult]) -> dict[str, dict[str, float]]:
    """method -> metric -> mean over the pairs (NaN values, e.g. an undefined correlation, are left out)."""
    if not results:
        return {}
    means: dict[str, dict[str, float]] = {}
    for method, first in results[0].scores.items():
        means[method] = {}
        for metric in first:
            values = [r.scores[method][metric] for r in results if not math.isnan(r.scores[method][metric])]
            means[method][metric] = sum(values) / len(values) if values else math.nan
    return means


def ratios(means: dict[str, dict[str, float]], reference: str = REFERENCE_METHOD) -> dict[str, dict[str, float]]:
    """method -> metric -> its mean divided by the reference method's mean (NaN where that is 0)."""
    ref = means[reference]
    return {method: {k: v / ref[k] if ref[k] else math.nan for k, v in row.items()} for method, row in means.items()}


def best_methods(table: dict[str, dict[str, float]], metric: str) -> set[str]:
    """The methods with the best value of `metric` in a method -> metric -> value table."""
    values = {m: row[metric] for m, row in table.items() if not math.isnan(row[metric])}
    if not values:
        return set()
    best = (min if metric in LOWER_IS_BETTER else max)(values.values())
    return {m for m, v in values.items() if v == best}


def format_table(table: dict[str, dict[str, float]], first_column: str = "method") -> str:
    """A plain-text table of a row -> column -> value mapping."""
    columns = list(next(iter(table.values())))
    rows = [[first_column] + columns] + [[name] + [f"{row[c]:.4f}" for c in columns] for name, row in table.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
                     for r in rows)


# ---------------------------------------------------------------------- contact sheet
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _caption_lines(scores: dict[str, float], names) -> list[list[tuple[str, str]]]:
    """[(metric, "metric value"), ...] two to a line."""
    parts = [(n, f"{n} {scores[n]:.3f}") for n in names]
    return [parts[i:i + 2] for i in range(0, len(parts), 2)]


def _caption(scores: dict[str, float], names) -> str:
    return "\n".join("  ".join(text for _, text in line) for line in _caption_lines(scores, names))


def select_rows(results: list, max_rows: int | None) -> list:
    """At most max_rows results, evenly spaced over the list (all when max_rows is None)."""
    if max_rows is None or len(results) <= max_rows:
        return list(results)
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    picks = sorted({round(i * (len(results) - 1) / max(1, max_rows - 1)) for i in range(max_rows)})
    return [results[i] for i in picks]


def contact_sheet(results: list[PairResult], titles: dict[str, str] | None = None,
                  caption_metrics=CAPTION_METRICS, means: dict | None = None, font_size: int = 14) -> Image.Image:
    """An RGB image: a header row naming the columns (A | B | each method), then one row per pair.

    Each row starts with the pair's name; each method's thumbnail has its scores of
    `caption_metrics` (those that were computed) underneath, the best of the row in green. The
    header gives each method's mean from `means` ((label, method -> metric -> value); default:
    over the rows shown). `titles` renames columns in the header.
    """
    if not results:
        raise ValueError("no pairs to put on a contact sheet")
    columns = list(results[0].thumbs)
    methods = list(results[0].scores)
    scored = [m for m in caption_metrics if methods and m in results[0].scores[methods[0]]]
    font, small = _font(font_size), _font(max(8, font_size - 2))
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label, means = means or (f"mean of {len(results)} pairs", mean_scores(results))

    header = {c: (titles or {}).get(c, c) for c in columns}
    for method in methods:
        if scored:
            header[method] += f"\n{label}:\n" + _caption(means[method], scored)
    widths = {c: max(max(r.thumbs[c].width for r in results), _text_size(draw, header[c], font)[0]) for c in columns}
    label_width = max(_text_size(draw, r.name, font)[0] for r in results)
    header_height = max(_text_size(draw, header[c], font)[1] for c in columns)
    caption_height = max((_text_size(draw, _caption(r.scores[m], scored), small)[1]
                          for r in results for m in methods), default=0) if scored else 0
    row_heights = [max(r.thumbs[c].height for c in columns) + (caption_height + _GAP if scored else 0) for r in results]

    width = _GAP + label_width + _GAP + sum(widths[c] + _GAP for c in columns)
    height = _GAP + header_height + _GAP + sum(h + _GAP for h in row_heights)
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    x0 = _GAP + label_width + _GAP
    x = x0
    for c in columns:
        draw.multiline_text((x, _GAP), header[c], fill=_TEXT, font=font)
        x += widths[c] + _GAP
    y = _GAP + header_height + _GAP
    for result, row_height in zip(results, row_heights):
        draw.text((_GAP, y), result.name, fill=_TEXT, font=font)
        best = {m: best_methods(result.scores, m) for m in scored}
        x = x0
        for c in columns:
            thumb = result.thumbs[c]
            sheet.paste(thumb.convert("RGB"), (x + (widths[c] - thumb.width) // 2, y))
            if c in result.scores and scored:
                line_y = y + thumb.height + _GAP // 2
                for line in _caption_lines(result.scores[c], scored):
                    cx = x
                    for metric, text in line:
                        colour = _BEST if len(methods) > 1 and c in best[metric] else _TEXT
                        draw.text((cx, line_y), text, fill=colour, font=small)
                        cx += _text_size(draw, text + "  ", small)[0]
                    line_y += _text_size(draw, "Ag", small)[1] + 3
            x += widths[c] + _GAP
        y += row_height + _GAP
    return sheet


def write_sheet(path: str | Path, results: list[PairResult], titles: dict[str, str] | None = None,
                max_rows: int | None = None, caption_metrics=CAPTION_METRICS) -> None:
    """Write the contact sheet of (at most max_rows of) `results` as an image file, atomically.

    The header means are over all `results`, also when fewer rows are shown.
    """
    means = (f"mean of {len(results)} pairs", mean_scores(results))
    sheet = contact_sheet(select_rows(results, max_rows), titles, caption_metrics, means)
    save_image(path, np.asarray(sheet))


# ---------------------------------------------------------------------- report folder
def _number(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.4f}"


def _html_table(table: dict[str, dict[str, float]], caption: str, sources: dict[str, str]) -> str:
    columns = list(next(iter(table.values())))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    best = {c: best_methods(table, c) for c in columns}
    rows = []
    for method, row in table.items():
        name = html.escape(method) + (f"<br><small>{html.escape(sources[method])}</small>" if method in sources else "")
        cells = "".join(f'<td class="{"best" if method in best[c] else ""}">{_number(row[c])}</td>' for c in columns)
        rows.append(f"<tr><th>{name}</th>{cells}</tr>")
    return f"<table><caption>{html.escape(caption)}</caption><tr><th>method</th>{head}</tr>{''.join(rows)}</table>"


def write_report(out_dir: str | Path, results: list[PairResult], failures: dict[str, str], *, convention: str, title: str, titles: dict[str, str] | None = None, sources: dict[str, str] | None = None,
                 max_rows: int | None = None) -> dict[str, Path]:
    """Write sheet.png, report.html (with thumbs/), scores.json and scores.csv into out_dir; returns their paths.

    `titles` names the columns ("A" -> "A: vi", ...); `sources` says where each model column's
    weights came from.
    """
    if not results:
        raise ValueError("no pair could be compared")
    out_dir = Path(out_dir)
    (out_dir / "thumbs").mkdir(parents=True, exist_ok=True)
    titles, sources = titles or {}, sources or {}
    means = mean_scores(results)
    relative = ratios(means) if REFERENCE_METHOD in means else None
    paths = {name: out_dir / name for name in ("sheet.png", "report.html", "scores.json", "scores.csv")}
    write_sheet(paths["sheet.png"], results, titles, max_rows)

    report = {"title": title, "convention": convention, "metrics": list(next(iter(means.values()))),
              "methods": list(means), "sources": sources, "pairs_scored": len(results), "mean": means,
              f"ratio_to_{REFERENCE_METHOD}": relative, "pairs": {r.name: r.scores for r in results},
              "failed": failures}
    atomic_write(paths["scores.json"], lambda f: json.dump(report, f, indent=2), mode="w")

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    columns = report["metrics"]
    writer.writerow(["pair", "method"] + columns)
    for r in results:
        for method, row in r.scores.items():
            writer.writerow([r.name, method] + [repr(row[c]) for c in columns])
    for method, row in means.items():
        writer.writerow(["mean", method] + [repr(row[c]) for c in columns])
    atomic_write(paths["scores.csv"], lambda f: f.write(buffer.getvalue()), mode="w")

    thumbs = [[f"thumbs/{i:04d}-{j}.png" for j in range(len(r.thumbs))] for i, r in enumerate(results)]
    for result, names in zip(results, thumbs):
        for thumb, name in zip(result.thumbs.values(), names):
            save_image(out_dir / name, np.asarray(thumb))
    page = _html(results, thumbs, failures, means, relative, columns, convention, title, titles, sources)
    atomic_write(paths["report.html"], lambda f: f.write(page), mode="w")
    return paths


def _html(results, thumbs, failures, means, relative, columns, convention, title, titles, sources) -> str:
    tables = [_html_table(means, f"mean over {len(results)} pairs", sources)]
    if relative is not None:
        tables.append(_html_table(relative, f"mean / {REFERENCE_METHOD}'s mean", sources))
    head = "".join(f"<th>{html.escape(titles.get(c, c))}</th>" for c in results[0].thumbs)
    rows = []
    for r, names in zip(results, thumbs):
        best = {c: best_methods(r.scores, c) for c in columns}
        cells = []
        for column, relpath in zip(r.thumbs, names):
            scores = ""
            if column in r.scores:
                scores = "<table class=s>" + "".join(
                    f'<tr class="{"best" if column in best[c] and len(r.scores) > 1 else ""}"><td>{html.escape(c)}</td>'
                    f"<td>{_number(r.scores[column][c])}</td></tr>" for c in columns) + "</table>"
            cells.append(f'<td><img src="{relpath}" alt="{html.escape(column)}">{scores}</td>')
        rows.append(f"<tr><th>{html.escape(r.name)}</th>{''.join(cells)}</tr>")
    failed = "".join(f"<li>{html.escape(name)}: {html.escape(msg)}</li>" for name, msg in failures.items())
    failed = f"<h2>Failed pairs</h2><ul>{failed}</ul>" if failed else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
table {{ border-collapse: collapse; margin: 0 1em 1em 0; }}
td, th {{ padding: 2px 6px; text-align: right; vertical-align: top; }}
caption {{ text-align: left; font-weight: bold; }}
.top {{ display: flex; flex-wrap: wrap; align-items: flex-start; }}
.top img {{ max-width: 60vw; }}
.best {{ color: #00782a; font-weight: bold; }}
table.s td {{ font-size: 80%; padding: 0 4px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(results)} pairs scored ({len(failures)} failed); metrics convention {html.escape(convention)}; higher is better
for every metric except Nabf; the best value per column is in bold green.</p>
<div class="top"><div>{''.join(tables)}</div><a href="sheet.png"><img src="sheet.png" alt="contact sheet"></a></div>
<h2>Per pair</h2>
<table><tr><th>pair</th>{head}</tr>{''.join(rows)}</table>
{failed}
</body></html>
"""
