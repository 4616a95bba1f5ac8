"""The fusionmamba command: fuse (one pair, folders, failures), evaluate, argument errors.

The error boundary is the pair: a bad file gives one line naming it, the other pairs finish,
the exit status is 1 and no output is half-written.
"""
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fusionmamba_triton import baselines, inference
from fusionmamba_triton.cli import main
from fusionmamba_triton.imaging import load_image, sample_pair, save_image
from fusionmamba_triton.model import FusionMamba
from tests.helpers import TINY, shared_data, write_bomb_png

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("weights") / "tiny"
    FusionMamba(**TINY).save_pretrained(directory)
    return directory


@pytest.fixture
def folders(tmp_path):
    """vi/ (RGB .png) and ir/ (grey .jpg) with 3 good pairs of different odd sizes, one unreadable, one mismatched."""
    rng = np.random.default_rng(0)
    vi, ir = tmp_path / "vi", tmp_path / "ir"
    vi.mkdir(), ir.mkdir()
    for name, (h, w) in {"a1": (33, 47), "a2": (40, 31), "a3": (20, 64)}.items():
        save_image(vi / f"{name}.png", rng.random((h, w, 3)))
        save_image(ir / f"{name}.jpg", rng.random((h, w)))
    (vi / "broken.png").write_bytes(b"\x89PNG truncated")
    save_image(ir / "broken.png", rng.random((16, 16)))
    save_image(vi / "mismatch.png", rng.random((16, 16)))
    save_image(ir / "mismatch.png", rng.random((17, 16)))
    return vi, ir


def _files(folder):
    return sorted(p.name for p in Path(folder).iterdir())


def test_fuse_one_sample_pair_with_a_baseline(tmp_path):
    a, b = sample_pair("itk_brain")
    out = tmp_path / "fused.png"
    assert main(["fuse", str(a), str(b), "-o", str(out), "--method", "laplacian"]) == 0
    assert load_image(out).shape == load_image(a).shape


def test_fuse_one_pair_with_weights_keeps_size_and_colour(tmp_path, folders, weights):
    vi, ir = folders
    out = tmp_path / "fused.png"
    assert main(["fuse", str(vi / "a1.png"), str(ir / "a1.jpg"), "-o", str(out), "--weights", str(weights),
                 "--device", "cpu", "--tile", "32", "--overlap", "8"]) == 0
    assert load_image(out).shape == (33, 47, 3)


def test_fuse_folders_reports_failures_and_writes_the_rest(tmp_path, folders, weights, capsys):
    vi, ir = folders
    out = tmp_path / "out"
    code = main(["fuse", "--a-dir", str(vi), "--b-dir", str(ir), "-o", str(out), "--weights", str(weights),
                 "--device", "cpu", "--task", "ir-vis"])
    err = capsys.readouterr().err
    assert code == 1
    assert _files(out) == ["a1.png", "a2.png", "a3.png"]  # nothing partial, no temporary files
    assert load_image(out / "a2.png").shape == (40, 31, 3)
    assert "broken.png" in err and "mismatch" in err and "2 of 5 pairs failed" in err


def _drop_bad_pairs(vi, ir):
    for name in ("broken", "mismatch"):
        (vi / f"{name}.png").unlink()
        (ir / f"{name}.png").unlink()


def test_fuse_folders_with_a_baseline_succeeds(tmp_path, folders):
    vi, ir = folders
    _drop_bad_pairs(vi, ir)
    out = tmp_path / "out"
    assert main(["fuse", "--a-dir", str(vi), "--b-dir", str(ir), "-o", str(out), "--method", "average"]) == 0
    assert _files(out) == ["a1.png", "a2.png", "a3.png"]


def test_fuse_without_weights_refuses_plainly(tmp_path, folders, capsys, monkeypatch):
    monkeypatch.setattr(inference, "default_weights", lambda task="ir-vis": None)  # an install without the bundled weights
    vi, ir = folders
    out = tmp_path / "fused.png"
    assert main(["fuse", str(vi / "a1.png"), str(ir / "a1.jpg"), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "untrained" in err and "--weights" in err and "--method average" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_fuse_wrong_checkpoint_names_the_file(tmp_path, folders, capsys):
    vi, ir = folders
    wide = tmp_path / "wide"
    FusionMamba(**{**TINY, "dims": [24, 48, 96, 192], "dims_decoder": [192, 96, 48, 24]}).save_pretrained(wide)
    out = tmp_path / "fused.png"
    assert main(["fuse", str(vi / "a1.png"), str(ir / "a1.jpg"), "-o", str(out), "--weights", str(wide),
                 "--preset", "small", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert str(wide) in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "args,match",
    [
        (["fuse", "missing_a.png", "missing_b.png", "-o", "{tmp}/x.png", "--method", "max"], "missing_a.png"),
        (["fuse", "--a-dir", "{tmp}/empty", "--b-dir", "{tmp}/empty", "-o", "{tmp}/o", "--method", "max"], "no images"),
        (["fuse", "--a-dir", "{tmp}/empty", "-o", "{tmp}/o"], "--b-dir"),
        (["fuse", "--data", "{tmp}/empty", "-o", "{tmp}/o"], "found no paired folders"),
        (["fuse", "{a}", "{b}", "-o", "{tmp}/x.png", "--tile", "48"], "--tile"),
        (["fuse", "--a-dir", "{tmp}/empty", "--b-dir", "{tmp}/empty", "-o", "{tmp}/o", "--ext", "xyz"], "--ext"),
    ],
    ids=["missing-file", "empty-folder", "one-folder", "no-layout", "bad-tile", "bad-ext"],
)
def test_fuse_bad_input_is_one_line(tmp_path, capsys, args, match):
    (tmp_path / "empty").mkdir()
    a, b = sample_pair("itk_brain")
    assert main([arg.format(tmp=tmp_path, a=a, b=b) for arg in args]) == 1
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_evaluate_writes_csv_and_json(tmp_path, folders, capsys):
    vi, ir = folders
    _drop_bad_pairs(vi, ir)
    fused = tmp_path / "fused"
    assert main(["fuse", "--a-dir", str(vi), "--b-dir", str(ir), "-o", str(fused), "--method", "max"]) == 0
    capsys.readouterr()
    code = main(["evaluate", "--a-dir", str(vi), "--b-dir", str(ir), "--fused-dir", str(fused),
                 "--metrics", "en", "sd", "ssim", "--csv", str(tmp_path / "s.csv"), "--json", str(tmp_path / "s.json")])
    assert code == 0
    table = capsys.readouterr().out
    assert "mean" in table and "ssim" in table
    rows = list(csv.reader((tmp_path / "s.csv").open()))
    assert rows[0] == ["image", "en", "sd", "ssim"] and [r[0] for r in rows[1:]] == ["a1", "a2", "a3", "mean"]
    report = json.loads((tmp_path / "s.json").read_text())
    assert set(report["images"]) == {"a1", "a2", "a3"}
    assert report["mean"]["sd"] == pytest.approx(np.mean([report["images"][k]["sd"] for k in ("a1", "a2", "a3")]))


@pytest.mark.parametrize(
    "extra,match",
    [(["--metrics", "vif", "sharpness"], "sharpness"), (["--convention", "octave"], "octave")],
    ids=["unknown-metric", "unknown-convention"],
)
def test_evaluate_rejects_unknown_names_without_output(tmp_path, folders, capsys, extra, match):
    vi, ir = folders
    code = main(["evaluate", "--a-dir", str(vi), "--b-dir", str(ir), "--fused-dir", str(vi),
                 "--csv", str(tmp_path / "s.csv"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 1 and match in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s.csv").exists()


def test_pet_mri_task_keeps_pet_colour(tmp_path):
    data = shared_data("mri_pet")
    out = tmp_path / "out"
    assert main(["fuse", "--data", str(data), "--task", "pet-mri", "-o", str(out), "--method", "laplacian"]) == 0
    fused, pet = load_image(out / "11.png"), load_image(data / "PET" / "11.png")
    assert fused.shape == pet.shape == (256, 256, 3)
    # the PET's colour (Cb, Cr) is kept where the RGB was not clipped
    chroma = lambda x: x @ np.array([[-0.168736, 0.5], [-0.331264, -0.418688], [0.5, -0.081312]])  # noqa: E731
    inside = ((fused > 0.02) & (fused < 0.98)).all(axis=-1)
    assert inside.mean() > 0.2
    np.testing.assert_allclose(chroma(fused)[inside], chroma(pet)[inside], atol=0.02)


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "fusionmamba_triton", "fuse", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0 and "--colour-source" in result.stdout


# ---------------------------------------------------------------- the error boundary
def test_decompression_bomb_is_one_line_and_the_batch_goes_on(tmp_path, folders, capsys):
    vi, ir = folders
    _drop_bad_pairs(vi, ir)
    write_bomb_png(vi / "huge.png")
    write_bomb_png(ir / "huge.png")
    out = tmp_path / "out"
    assert main(["fuse", "--a-dir", str(vi), "--b-dir", str(ir), "-o", str(out), "--method", "average"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "huge.png" in errors[0] and "--max-pixels" in errors[0] and "--tile" in errors[0]
    assert _files(out) == ["a1.png", "a2.png", "a3.png"]

    code = main(["evaluate", "--a-dir", str(vi), "--b-dir", str(ir), "--fused-dir", str(vi), "--metrics", "sd"])
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert code == 1 and len(errors) == 1 and "huge.png" in errors[0]


def test_max_pixels_sets_the_limit(tmp_path, folders, capsys, pillow_limit):
    vi, ir = folders
    out = tmp_path / "fused.png"
    args = ["fuse", str(vi / "a1.png"), str(ir / "a1.jpg"), "-o", str(out), "--method", "max"]
    assert main(args + ["--max-pixels", str(33 * 47 - 1)]) == 1  # one pixel short
    assert "exceeds limit" in capsys.readouterr().err and not out.exists()
    assert main(args + ["--max-pixels", str(33 * 47)]) == 0
    assert load_image(out).shape == (33, 47, 3)


def test_unexpected_error_in_one_pair_is_one_line(tmp_path, folders, capsys, monkeypatch):
    vi, ir = folders
    _drop_bad_pairs(vi, ir)
    average = baselines.get_fuser("average")

    def flaky(a, b, colour_source="auto"):
        if a.shape[:2] == (40, 31):
            raise RuntimeError("something broke\nsecond line")
        return average(a, b, colour_source=colour_source)

    monkeypatch.setattr(baselines, "get_fuser", lambda name: flaky)
    out = tmp_path / "out"
    assert main(["fuse", "--a-dir", str(vi), "--b-dir", str(ir), "-o", str(out), "--method", "average"]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "a2.png" in errors[0] and "RuntimeError: something broke" in errors[0]
    assert "second line" not in err and "1 of 3 pairs failed" in err
    assert _files(out) == ["a1.png", "a3.png"]


def test_evaluate_names_files_without_a_partner(tmp_path, folders, capsys):
    vi, ir = folders
    _drop_bad_pairs(vi, ir)
    fused = tmp_path / "fused"
    assert main(["fuse", "--a-dir", str(vi), "--b-dir", str(ir), "-o", str(fused), "--method", "max"]) == 0
    save_image(vi / "only_a.png", np.zeros((20, 20)))
    save_image(ir / "only_b.png", np.zeros((20, 20)))
    capsys.readouterr()
    code = main(["evaluate", "--a-dir", str(vi), "--b-dir", str(ir), "--fused-dir", str(fused), "--metrics", "sd",
                 "--json", str(tmp_path / "s.json")])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if ": error: " in line]
    assert code == 1 and len(errors) == 2
    assert "only_a.png" in errors[0] and str(ir) in errors[0]
    assert "only_b.png" in errors[1] and str(vi) in errors[1]
    report = json.loads((tmp_path / "s.json").read_text())
    assert set(report["images"]) == {"a1", "a2", "a3"} and len(report["failed"]) == 2


def test_evaluate_default_metrics_on_small_images_give_nan_and_one_warning(tmp_path, folders, capsys):
    """MS-SSIM needs a short side above 160 px, VIF 41 px: the folders' pairs are smaller, one more is 45 x 60."""
    vi, ir = folders
    _drop_bad_pairs(vi, ir)
    rng = np.random.default_rng(1)
    save_image(vi / "b1.png", rng.random((45, 60)))
    save_image(ir / "b1.png", rng.random((45, 60)))
    fused = tmp_path / "fused"
    assert main(["fuse", "--a-dir", str(vi), "--b-dir", str(ir), "-o", str(fused), "--method", "average"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--a-dir", str(vi), "--b-dir", str(ir), "--fused-dir", str(fused),
                 "--json", str(tmp_path / "s.json"), "--csv", str(tmp_path / "s.csv")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warning" in err[0], err
    assert "vif on 3 of 4 image(s) (a1, a2, a3): VIF needs images of at least 41x41" in err[0]
    assert "ms_ssim on 4 of 4 image(s)" in err[0] and "160 px" in err[0]
    report = json.loads((tmp_path / "s.json").read_text())
    assert all(scores["ms_ssim"] is None for scores in report["images"].values())
    assert report["mean"]["ms_ssim"] is None
    assert report["images"]["a1"]["vif"] is None and report["mean"]["vif"] == report["images"]["b1"]["vif"] > 0
    others = [v for scores in report["images"].values() for k, v in scores.items() if k not in ("ms_ssim", "vif")]
    assert len(others) == 4 * 15 and all(isinstance(v, float) and math.isfinite(v) for v in others)
    rows = list(csv.reader((tmp_path / "s.csv").open()))
    assert rows[-1][0] == "mean" and rows[-1][rows[0].index("ms_ssim")] == "nan"


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--weights", "{a}"], "not a PyTorch checkpoint"),
        (["--tile", "32", "--overlap", "31"], "overlap must be an integer in [0, tile / 2]"),
        (["--max-pixels", "0"], "--max-pixels must be positive"),
    ],
    ids=["image-as-weights", "overlap-above-half-tile", "max-pixels-zero"],
)
def test_fuse_bad_options_are_one_line(tmp_path, capsys, extra, match):
    a, b = sample_pair("itk_brain")
    out = tmp_path / "x.png"
    assert main(["fuse", str(a), str(b), "-o", str(out), *[e.format(a=a) for e in extra]]) == 1
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1, err
    assert "weights_only" not in err
    assert not out.exists()
