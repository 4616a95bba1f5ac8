"""The loss ablation (Table 8), the train command's --variant / --loss-without, and a short run of
benchmarks/ablation.py on generated images."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks import ablation
from fusionmamba_triton.cli import main
from fusionmamba_triton.imaging import save_image
from fusionmamba_triton.inference import load_model
from fusionmamba_triton.losses import PRESETS, FusionLoss
from fusionmamba_triton.train import TrainConfig
from tests.helpers import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def images(shape=(2, 1, 48, 40), seed=0):
    g = torch.Generator().manual_seed(seed)
    a, b, f = (F.avg_pool2d(torch.rand(shape, generator=g), 3, stride=1, padding=1) for _ in range(3))
    return a, b, f.requires_grad_()


# ---------------------------------------------------------------- FusionLoss(without=...)
@pytest.mark.parametrize("preset", ["paper", "official"])
@pytest.mark.parametrize("without", [("ssim",), ("int",), ("text",), ("int", "text")], ids="-".join)
def test_without_leaves_the_terms_out_of_the_total(preset, without):
    a, b, f = images()
    total, terms = FusionLoss(preset, without=without)(f, a, b)
    full_total, full_terms = FusionLoss(preset)(f, a, b)
    assert set(terms) == {"intensity", "texture", "ssim"}  # every term is still reported
    for name in terms:
        torch.testing.assert_close(terms[name], full_terms[name])
    dropped = {"int": "intensity", "text": "texture", "ssim": "ssim"}
    kept = [n for n in PRESETS[preset] if n not in {dropped[t] for t in without}]
    torch.testing.assert_close(total, sum(PRESETS[preset][n] * terms[n] for n in kept))
    assert total < full_total


def test_without_gives_the_gradient_of_the_kept_terms_only():
    a, b, f = images()
    total, _ = FusionLoss("paper", without=("ssim",))(f, a, b)
    (grad,) = torch.autograd.grad(total, f)
    from fusionmamba_triton.losses import intensity_loss, texture_loss

    (expected,) = torch.autograd.grad(intensity_loss(f, a, b) + texture_loss(f, a, b), f)
    torch.testing.assert_close(grad, expected)


def test_without_validation():
    loss = FusionLoss("paper", without="ssim")
    assert loss.without == ("ssim",) and set(loss.weights) == {"intensity", "texture"}
    assert "without=('ssim',)" in repr(loss)
    assert FusionLoss("paper", without=("ssim", "int")).without == ("int", "ssim")  # the paper's order
    with pytest.raises(ValueError, match=r"unknown loss term\(s\) \['intensity'\]; choose from \('int', 'text', 'ssim'\)"):
        FusionLoss("paper", without=("intensity",))
    with pytest.raises(ValueError, match="no loss"):
        FusionLoss("paper", without=("int", "text", "ssim"))


def test_train_config_checks_variant_and_loss_terms(tmp_path):
    base = dict(a_dir=str(tmp_path), b_dir=str(tmp_path), crop=64)
    with pytest.raises(ValueError, match="unknown variant"):
        TrainConfig(**base, variant="evss").validate()
    with pytest.raises(ValueError, match="unknown loss term"):
        TrainConfig(**base, loss_without=("grad",)).validate()
    TrainConfig(**base, variant="no_cmfm", loss_without=("text",)).validate()


# ---------------------------------------------------------------- data
def _write_pairs(folder, count, rng, size=(70, 80)):
    for sub in ("vi", "ir"):
        (folder / sub).mkdir(parents=True)
    for i in range(count):
        save_image(folder / "vi" / f"{i:03d}.png", rng.random((*size, 3)))
        save_image(folder / "ir" / f"{i:03d}.png", rng.random(size))


@pytest.fixture(scope="module")
def split_data(tmp_path_factory):
    """ir-vis/train (4 pairs of 70 x 80) and ir-vis/val (2 pairs of 165 x 170), like ../shared/data/train."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    _write_pairs(root / "ir-vis" / "train", 4, rng)
    _write_pairs(root / "ir-vis" / "val", 2, rng, size=(165, 170))  # MS-SSIM scores need a short side over 160 px
    return root


# ---------------------------------------------------------------- fusionmamba train --variant --loss-without
def test_cli_train_variant_and_loss_without(split_data, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(split_data), "--task", "ir-vis", "-o", str(out), "--model-config", json.dumps(TINY),
            "--crop", "64", "--batch-size", "2", "--steps", "2", "--device", "cpu", "--workers", "0", "--log-every", "1",
            "--loss", "paper", "--variant", "no_cmfm", "--loss-without", "ssim"]
    assert main(args) == 0
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["variant"] == "no_cmfm"
    for weights in (out / "final", out / "last.pt"):  # last.pt has no config.json: the variant comes from its keys
        model = load_model(weights)
        assert model.config["variant"] == "no_cmfm"
        assert not any(".self_attention_cross." in k for k in model.state_dict())
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    assert checkpoint["train_config"]["loss_without"] == ["ssim"] and checkpoint["train_config"]["variant"] == "no_cmfm"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    for record in log:  # paper weights 1, 1 and the SSIM term left out
        assert record["loss"] == pytest.approx(record["intensity"] + record["texture"], rel=1e-5)
        assert record["ssim"] > 0


def test_cli_train_loss_weights(split_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", str(split_data), "--task", "ir-vis", "-o", str(out), "--model-config", json.dumps(TINY),
            "--crop", "64", "--batch-size", "2", "--steps", "2", "--device", "cpu", "--workers", "0", "--log-every", "1",
            "--loss", "paper", "--loss-weights", "int=3", "ssim=2"]
    assert main(args) == 0
    for record in (json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()):
        assert record["loss"] == pytest.approx(3 * record["intensity"] + record["texture"] + 2 * record["ssim"], rel=1e-5)
    assert main(args[:-2] + ["int:3"]) == 1
    assert "--loss-weights: expected TERM=WEIGHT" in capsys.readouterr().err


def test_cli_train_rejects_unknown_variant_and_term(split_data, tmp_path, capsys):
    base = ["train", "--data", str(split_data), "-o", str(tmp_path / "run"), "--steps", "1"]
    for extra, word in ((["--variant", "evss"], "--variant"), (["--loss-without", "grad"], "--loss-without")):
        with pytest.raises(SystemExit) as info:
            main(base + extra)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert word in err and "invalid choice" in err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- benchmarks/ablation.py
def _script_args(data, out, *extra):
    return ["--data", str(data), "--out", str(out), "--recipe", json.dumps({"model_config": TINY}), "--steps", "1",
            "--crop", "64", "--batch-size", "2", "--threads", "1", "--device", "cpu", *extra]


def test_ablation_script_trains_every_row_and_prints_both_tables(split_data, tmp_path, capsys):
    out = tmp_path / "ablation"
    assert ablation.main(_script_args(split_data, out)) == 0
    printed = capsys.readouterr().out
    assert "Table 7. The ablation of network structure" in printed and "Table 8. The ablation of Loss Function" in printed
    assert "| Method | VIF ours / paper | SCD ours / paper | Q^AB/F ours / paper" in printed
    assert "cannot show" in printed and "1 steps x batch 2 of 64x64 crops" in printed
    rows = [line for line in printed.splitlines() if line.startswith("| ") and "/ 0." in line]
    assert [r.split(" | ")[0][2:] for r in rows] == list(ablation.PAPER_TABLE7) + list(ablation.PAPER_TABLE8)
    assert "| DVSS→EVSS | " in printed and " / 0.6809 | " in printed  # the paper's number next to ours
    assert not any("– /" in r for r in rows)  # every row has our numbers

    report = json.loads((out / "ablation.json").read_text())
    assert set(report["runs"]) == set(ablation.RUN_NAMES)
    assert report["runs"]["no_cmfm"]["variant"] == "no_cmfm" and report["runs"]["without_int"]["loss_without"] == ["int"]
    assert report["runs"]["full"]["config"]["model_config"] == TINY  # --recipe reached TrainConfig
    assert set(report["per_image"]["full"]) == {"000", "001"}  # the val split, not the training pairs
    for run in report["runs"].values():
        assert set(run["mean"]) == set(ablation.METRICS) and run["steps"] == 1
        assert all(np.isfinite(v) for v in run["mean"].values()), run["run"]
    assert [r["method"] for r in report["tables"]["table8"]] == list(ablation.PAPER_TABLE8)
    json_start = printed.index('{\n "task"')
    printed_json = json.loads(printed[json_start:printed.index("\nablation: wrote")])
    assert printed_json["table7"]["FusionMamba"]["paper"] == list(ablation.PAPER_TABLE7["FusionMamba"])
    assert printed_json["direction_agreement"]["table7"]["of"] == 30

    # --resume reads finished runs back instead of training them again
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/result.json")}
    assert len(stamps) == len(ablation.RUNS)
    assert ablation.main(_script_args(split_data, out, "--resume", "--only", "full", "no_dfem")) == 0
    printed = capsys.readouterr().out
    assert printed.count("read back (--resume)") == 2 and "trained" not in printed.split("\n\n")[0]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert "– / 0.6809" in printed  # rows not asked for are left empty


def test_ablation_script_checks_the_data_before_training(tmp_path, capsys):
    _write_pairs(tmp_path / "flat", 2, np.random.default_rng(1))
    assert ablation.main(_script_args(tmp_path / "flat", tmp_path / "out")) == 1
    assert "no separate val split" in capsys.readouterr().err
    assert ablation.main(_script_args(tmp_path / "flat", tmp_path / "out", "--val-data", str(tmp_path / "flat" / "vi"))) == 1
    assert "found no paired folders" in capsys.readouterr().err
    _write_pairs(tmp_path / "small_val", 1, np.random.default_rng(2), size=(100, 200))
    assert ablation.main(_script_args(tmp_path / "flat", tmp_path / "out", "--val-data", str(tmp_path / "small_val"))) == 1
    assert "000.png: too small to score" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        ablation.main(_script_args(tmp_path / "flat", tmp_path / "out", "--recipe", '{"variant": "no_cmfm"}'))
    assert "cannot set variant" in capsys.readouterr().err
