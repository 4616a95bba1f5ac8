"""`fusionmamba compare` and `evaluate --sheet`: scores, the contact sheet, the HTML report, bad pairs."""
import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fusionmamba_triton.cli import main
from fusionmamba_triton.imaging import load_image, save_image
from fusionmamba_triton.model import TASK_CHECKPOINTS, FusionMamba
from fusionmamba_triton.report import (PairResult, best_methods, contact_sheet, mean_scores, parse_weights, ratios,
                                       select_rows, thumbnail)
from tests.helpers import TINY

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
TRAIN_DATA = ROOT.parent / "shared" / "data" / "train"
METRICS = ["vif", "qabf", "ssim"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Two different TINY checkpoints (save_pretrained folders)."""
    folders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        folder = tmp_path_factory.mktemp("weights") / f"tiny{seed}"
        FusionMamba(**TINY).save_pretrained(folder)
        folders.append(folder)
    return folders


@pytest.fixture
def folders(tmp_path):
    """vi/ (RGB) and ir/ (grey): 3 good pairs of odd sizes, one unreadable, one without a partner."""
    rng = np.random.default_rng(0)
    vi, ir = tmp_path / "data" / "vi", tmp_path / "data" / "ir"
    vi.mkdir(parents=True), ir.mkdir(parents=True)
    for name, (h, w) in {"p1": (45, 53), "p2": (50, 43), "p3": (48, 70)}.items():
        ramp = np.linspace(0, 1, w)[None, :] * np.linspace(0.2, 1, h)[:, None]
        save_image(vi / f"{name}.png", np.stack([ramp, 1 - ramp, 0.5 * ramp], -1) * 0.8 + 0.2 * rng.random((h, w, 3)))
        save_image(ir / f"{name}.jpg", (1 - ramp) * 0.6 + 0.4 * rng.random((h, w)))
    (vi / "broken.png").write_bytes(b"\x89PNG truncated")
    save_image(ir / "broken.png", rng.random((16, 16)))
    save_image(ir / "lonely.png", rng.random((16, 16)))
    return vi, ir


def good_pairs(folders):
    """The folders without their unreadable and unpartnered files."""
    vi, ir = folders
    for path in (vi / "broken.png", ir / "broken.png", ir / "lonely.png"):
        path.unlink(missing_ok=True)
    return vi, ir


def _compare(folders, out, *extra):
    vi, ir = folders
    return main(["compare", "--a-dir", str(vi), "--b-dir", str(ir), "-o", str(out), "--task", "ir-vis",
                 "--metrics", *METRICS, "--thumb-height", "40", "--device", "cpu", *extra])


def test_compare_writes_sheet_report_and_scores_and_skips_a_bad_pair(folders, weights, tmp_path, capsys):
    out = tmp_path / "report"
    code = _compare(folders, out, "--methods", "model", "average", "max",
                    "--weights", f"first={weights[0]}", f"second={weights[1]}")
    assert code == 1  # one pair failed, and one file has no partner
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert len(errors) == 2 and "lonely.png" in errors[0] and "broken.png" in errors[1], captured.err
    assert "2 of 5 pairs failed" in captured.err
    assert "bundled" not in captured.err

    report = json.loads((out / "scores.json").read_text())
    assert report["methods"] == ["first", "second", "average", "max"] and report["metrics"] == METRICS
    assert sorted(report["pairs"]) == ["p1", "p2", "p3"]
    assert len(report["failed"]) == 2 and "broken" in report["failed"]
    assert any(key.endswith("lonely.png") for key in report["failed"])
    assert report["sources"] == {"first": str(weights[0]), "second": str(weights[1])}
    assert report["pairs"]["p1"]["first"] != report["pairs"]["p1"]["second"]  # two checkpoints, two columns
    for method, row in report["mean"].items():
        for metric, value in row.items():
            expected = np.mean([report["pairs"][p][method][metric] for p in report["pairs"]])
            assert value == pytest.approx(expected, rel=1e-12)
            assert report["ratio_to_average"][method][metric] == pytest.approx(value / report["mean"]["average"][metric])

    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["pair", "method"] + METRICS and len(rows) == 1 + 3 * 4 + 4
    assert rows[-1][:2] == ["mean", "max"] and float(rows[-1][2]) == report["mean"]["max"]["vif"]

    page = (out / "report.html").read_text()
    assert page.count("<img src=\"thumbs/") == 3 * 6 and 'src="sheet.png"' in page
    best_vif = best_methods(report["mean"], "vif")
    for method in report["methods"]:  # the first table is the means; its first column is vif
        row = page.split(f"<tr><th>{method}", 1)[1]
        assert ('<td class="best">' == row[row.index("<td"):][:17]) == (method in best_vif), method
    assert "broken" in page  # failures are listed
    for name in ("thumbs/0000-0.png", "thumbs/0002-5.png"):
        assert Image.open(out / name).height == 40

    sheet = Image.open(out / "sheet.png")
    assert sheet.mode == "RGB" and sheet.width > 6 * 40 and sheet.height > 3 * 40


def test_compare_scores_equal_fuse_then_evaluate(folders, weights, tmp_path, capsys):
    vi, ir = good_pairs(folders)
    out = tmp_path / "report"
    assert _compare(folders, out, "--methods", "model", "laplacian", "--weights", str(weights[0]), "--save-fused") == 0
    report = json.loads((out / "scores.json").read_text())
    assert report["methods"] == ["model", "laplacian"]
    for method in report["methods"]:
        fused = out / "fused" / method
        assert sorted(p.name for p in fused.iterdir()) == ["p1.png", "p2.png", "p3.png"]
        assert load_image(fused / "p1.png").ndim == 3  # the visible image's colour is kept
        scores = tmp_path / f"{method}.json"
        main(["evaluate", "--a-dir", str(vi), "--b-dir", str(ir), "--fused-dir", str(fused), "--metrics", *METRICS,
              "--json", str(scores)])
        evaluated = json.loads(scores.read_text())["images"]
        for pair, row in evaluated.items():
            assert row == report["pairs"][pair][method], (method, pair)


def test_compare_uses_the_tasks_bundled_weights_and_says_so(folders, tmp_path, capsys):
    vi, ir = good_pairs(folders)
    out = tmp_path / "report"
    assert main(["compare", "--a-dir", str(vi), "--b-dir", str(ir), "-o", str(out), "--task", "pet-mri",
                 "--methods", "model", "--metrics", "ssim", "--device", "cpu", "--colour-source", "none"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "bundled" in line]
    name = TASK_CHECKPOINTS["pet-mri"]
    assert len(notes) == 1 and f"{name!r} for pet-mri" in notes[0]
    assert json.loads((out / "scores.json").read_text())["sources"] == {"model": f"bundled checkpoint {name!r}"}


@pytest.mark.parametrize("args, match", [
    (["--methods", "average", "--weights", "x.pt"], "'model' is not among the methods"),
    (["--weights", "max=x.pt"], "name of a classical method"),
    (["--metrics", "nope"], "unknown metric"),
    (["--convention", "nope"], "unknown convention"),
    (["--max-rows", "0"], "--max-rows must be at least 1"),
    (["--weights", "missing.pt"], "missing.pt"),
], ids=["weights-without-model", "name-clash", "metric", "convention", "max-rows", "missing-weights"])
def test_compare_bad_arguments_are_one_line(folders, tmp_path, capsys, args, match):
    out = tmp_path / "report"
    assert _compare(folders, out, *args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert not (out / "scores.json").exists()


def test_parse_weights(tmp_path):
    odd = tmp_path / "a=b"
    odd.mkdir()
    assert parse_weights(["run/final"]) == {"model": "run/final"}
    assert parse_weights(["old=run1/final", "run2/best"]) == {"old": "run1/final", "best": "run2/best"}
    assert parse_weights([str(odd)]) == {"model": str(odd)}  # an existing path with "=" in it is a path
    with pytest.raises(ValueError, match="two checkpoints are called 'final'"):
        parse_weights(["run1/final", "run2/final"])
    with pytest.raises(ValueError, match="NAME=PATH"):
        parse_weights(["x="])


def _solid(colour, size):
    return Image.new("RGB", size, colour)


def test_contact_sheet_keeps_colour_height_and_order():
    red, blue, green = (230, 20, 20), (20, 20, 230), (20, 200, 20)
    results = [PairResult(f"pair{i}", {"A": _solid(red, (30 + i, 20)), "B": _solid(blue, (30 + i, 20)),
                                       "m": _solid(green, (30 + i, 20))}, {"m": {"vif": 0.5}}) for i in range(3)]
    sheet = np.asarray(contact_sheet(results, {"A": "A: vi"}))
    for colour, i in ((red, 0), (blue, 1), (green, 2)):
        mask = np.all(sheet == colour, axis=-1)
        assert mask.sum() == 20 * (30 + 31 + 32), colour  # every thumbnail whole, at its height
        columns = np.flatnonzero(mask.any(axis=0))
        assert columns.min() > 0 and len(columns) == 32  # one column, as wide as its widest thumbnail
    red_x, blue_x, green_x = (np.flatnonzero(np.all(sheet == c, axis=-1).any(axis=0)).min() for c in (red, blue, green))
    assert red_x < blue_x < green_x  # A | B | method


def test_thumbnail_has_a_fixed_height_and_keeps_colour():
    grey, colour = np.full((100, 50), 0.5), np.zeros((10, 20, 3))
    colour[..., 1] = 1.0
    assert thumbnail(grey, 40).size == (20, 40) and thumbnail(grey, 40).mode == "L"
    up = thumbnail(colour, 40)
    assert up.size == (80, 40) and up.mode == "RGB" and np.asarray(up)[..., 1].min() == 255


def test_select_rows_spreads_over_the_list():
    assert select_rows(list(range(10)), 4) == [0, 3, 6, 9]
    assert select_rows(list(range(3)), 5) == [0, 1, 2]
    assert select_rows(list(range(10)), 1) == [0]
    assert select_rows(list(range(10)), None) == list(range(10))


def test_tables_mean_ratio_and_best():
    results = [PairResult("a", {}, {"x": {"vif": 1.0, "nabf": 0.2}, "average": {"vif": 0.5, "nabf": 0.1}}),
               PairResult("b", {}, {"x": {"vif": math.nan, "nabf": 0.4}, "average": {"vif": 1.5, "nabf": 0.3}})]
    means = mean_scores(results)
    assert means == {"x": {"vif": 1.0, "nabf": pytest.approx(0.3)}, "average": {"vif": 1.0, "nabf": pytest.approx(0.2)}}
    assert ratios(means)["x"] == {"vif": 1.0, "nabf": pytest.approx(1.5)}
    assert best_methods(means, "vif") == {"x", "average"}  # a tie keeps both
    assert best_methods(means, "nabf") == {"average"}  # lower is better


def test_evaluate_sheet(folders, tmp_path, capsys):
    vi, ir = good_pairs(folders)
    fused = tmp_path / "average"
    assert main(["fuse", "--a-dir", str(vi), "--b-dir", str(ir), "-o", str(fused), "--method", "average"]) == 0
    sheets = {}
    for rows in (None, 2):
        sheets[rows] = tmp_path / f"sheet{rows}.png"
        extra = ["--max-rows", str(rows)] if rows else []
        assert main(["evaluate", "--a-dir", str(vi), "--b-dir", str(ir), "--fused-dir", str(fused), "--metrics", "ssim",
                     "--sheet", str(sheets[rows]), *extra]) == 0
    full, two = Image.open(sheets[None]), Image.open(sheets[2])
    assert full.height > two.height > 2 * 256  # two rows of 256-pixel thumbnails
    assert main(["evaluate", "--a-dir", str(vi), "--b-dir", str(ir), "--fused-dir", str(fused), "--sheet",
                 str(tmp_path / "x.png"), "--max-rows", "0"]) == 1
    assert "--max-rows must be at least 1" in capsys.readouterr().err


@pytest.mark.skipif(not (TRAIN_DATA / "pet-mri" / "val").is_dir(), reason="needs ../shared/data/train")
def test_compare_on_real_pet_mri_pairs_keeps_the_pet_colour(tmp_path):
    """Two real validation pairs (copied to a temporary folder, never into the repository), baselines only."""
    source = TRAIN_DATA / "pet-mri" / "val"
    for modality in ("MRI", "PET"):
        (tmp_path / "val" / modality).mkdir(parents=True)
        for path in sorted((source / modality).iterdir())[:2]:
            shutil.copy(path, tmp_path / "val" / modality / path.name)
    out = tmp_path / "report"
    assert main(["compare", "--data", str(tmp_path / "val"), "--task", "pet-mri", "-o", str(out),
                 "--methods", "average", "max", "--metrics", "vif", "qabf", "--save-fused"]) == 0
    report = json.loads((out / "scores.json").read_text())
    assert report["pairs_scored"] == 2
    assert report["mean"]["max"]["qabf"] > report["mean"]["average"]["qabf"]  # max keeps more edge strength on PET
    fused = load_image(next((out / "fused" / "max").iterdir()))
    assert fused.ndim == 3 and np.ptp(fused[..., 0] - fused[..., 2]) > 0.1  # PET colour kept
