"""The fusionmamba command: fuse (one pair, folders, failures), evaluate, argument errors."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fusionmamba_triton import inference
from fusionmamba_triton.cli import main
from fusionmamba_triton.imaging import load_image, sample_pair, save_image
from fusionmamba_triton.model import FusionMamba
from tests.helpers import TINY

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


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


def test_fuse_folders_with_a_baseline_succeeds(tmp_path, folders):
    vi, ir = folders
    for name in ("broken", "mismatch"):
        (vi / f"{name}.png").unlink()
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
    for name in ("broken", "mismatch"):
        (vi / f"{name}.png").unlink()
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


@pytest.mark.skipif(not (SHARED_DATA / "mri_pet").is_dir(), reason="needs /work/shared/data")
def test_pet_mri_task_keeps_pet_colour(tmp_path):
    out = tmp_path / "out"
    assert main(["fuse", "--data", str(SHARED_DATA / "mri_pet"), "--task", "pet-mri", "-o", str(out),
                 "--method", "laplacian"]) == 0
    fused = load_image(out / "11.png")
    assert fused.shape == (256, 256, 3)


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "fusionmamba_triton", "fuse", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0 and "--colour-source" in result.stdout
