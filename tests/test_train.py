"""Training: data pairing, schedules, a few CPU steps with checkpoint / resume, and 2-process DDP."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fusionmamba_triton.data import PairDataset, find_pairs, find_task_dirs
from fusionmamba_triton.imaging import save_image
from fusionmamba_triton.model import FusionMamba
from fusionmamba_triton.train import TrainConfig, lr_factor, train
from tests.helpers import TINY

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def dataset_dir(tmp_path):
    """4 registered pairs of 70 x 80 (visible RGB .png, infrared grey .jpg) under MSRS-like vi/ and ir/."""
    rng = np.random.default_rng(0)
    for folder in ("vi", "ir"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    for i in range(4):
        save_image(tmp_path / "data" / "vi" / f"{i:05d}.png", rng.random((70, 80, 3)))
        save_image(tmp_path / "data" / "ir" / f"{i:05d}.jpg", rng.random((70, 80)))
    return tmp_path / "data"


def _config(data, out, **overrides):
    config = dict(a_dir=str(data / "vi"), b_dir=str(data / "ir"), out_dir=str(out), model_config=TINY, crop=64,
                  batch_size=2, device="cpu", num_workers=0, log_every=1, checkpoint_every=1)
    return TrainConfig(**{**config, **overrides})


def _weights(directory):
    return FusionMamba.from_pretrained(directory).state_dict()


def test_find_pairs_matches_stems_across_extensions(dataset_dir, tmp_path):
    (dataset_dir / "ir" / "extra.png").write_bytes(b"")
    pairs, unmatched = find_pairs(dataset_dir / "vi", dataset_dir / "ir")
    assert [p[0] for p in pairs] == ["00000", "00001", "00002", "00003"]
    assert pairs[0][1].suffix == ".png" and pairs[0][2].suffix == ".jpg"
    assert [p.name for p in unmatched] == ["extra.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        find_pairs(tmp_path / "empty", dataset_dir / "ir")
    with pytest.raises(ValueError, match="no such folder"):
        find_pairs(tmp_path / "missing", dataset_dir / "ir")


@pytest.mark.parametrize(
    "layout,task,a,b",
    [
        (["train/vi", "train/ir"], "ir-vis", "vi", "ir"),
        (["visible", "lwir"], "ir-vis", "visible", "lwir"),
        (["MRI", "PET"], "pet-mri", "MRI", "PET"),
        (["CT-MRI/test/CT", "CT-MRI/test/MRI"], "ct-mri", "MRI", "CT"),
    ],
    ids=["msrs", "kaist", "harvard-pet", "harvard-nested"],
)
def test_find_task_dirs_by_folder_name(tmp_path, layout, task, a, b):
    for folder in layout:
        (tmp_path / folder).mkdir(parents=True)
    a_dir, b_dir, found = find_task_dirs(tmp_path)
    assert (a_dir.name, b_dir.name, found) == (a, b, task)


def test_find_task_dirs_prefers_the_split(tmp_path):
    for folder in ("MSRS/test/vi", "MSRS/test/ir", "MSRS/train/vi", "MSRS/train/ir"):
        (tmp_path / folder).mkdir(parents=True)
    assert find_task_dirs(tmp_path / "MSRS", prefer="train")[0].parent.name == "train"
    assert find_task_dirs(tmp_path / "MSRS", prefer="test")[0].parent.name == "test"
    with pytest.raises(ValueError, match="several folders"):
        find_task_dirs(tmp_path / "MSRS")


def test_find_task_dirs_errors(tmp_path):
    with pytest.raises(ValueError, match="found no paired folders"):
        find_task_dirs(tmp_path)
    for folder in ("MRI", "CT", "PET"):
        (tmp_path / folder).mkdir()
    with pytest.raises(ValueError, match="several tasks"):
        find_task_dirs(tmp_path)
    assert find_task_dirs(tmp_path, "ct-mri")[1].name == "CT"


def test_dataset_crops_and_is_reproducible(dataset_dir):
    pairs, _ = find_pairs(dataset_dir / "vi", dataset_dir / "ir")
    dataset = PairDataset(pairs, crop=96, seed=3)  # larger than the 70 x 80 images: padded
    a, b = dataset[1]
    assert a.shape == b.shape == (1, 96, 96)
    torch.testing.assert_close(dataset[1], (a, b))
    dataset.set_epoch(1)
    assert not torch.equal(dataset[1][0], a)
    resized = PairDataset(pairs, crop=None, resize=64, augment=False)[0]
    assert resized[0].shape == (1, 64, 64)


def test_lr_schedules():
    official = lr_factor("official", steps_per_epoch=10, total_steps=30)
    assert [official(s) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.75, 0.75**2]
    cosine = lr_factor("cosine", steps_per_epoch=10, total_steps=30)
    assert cosine(0) == 1.0 and abs(cosine(30)) < 1e-12 and abs(cosine(15) - 0.5) < 1e-12
    assert lr_factor("constant", 10, 30)(29) == 1.0


def test_bad_config_is_rejected(dataset_dir, tmp_path):
    with pytest.raises(ValueError, match="multiple of 32"):
        train(_config(dataset_dir, tmp_path / "run", crop=50))
    with pytest.raises(ValueError, match="schedule"):
        train(_config(dataset_dir, tmp_path / "run", schedule="step"))
    with pytest.raises(ValueError, match="fewer than one batch"):
        train(_config(dataset_dir, tmp_path / "run", batch_size=8))


def test_train_checkpoint_and_resume_match_a_straight_run(dataset_dir, tmp_path):
    # 4 pairs, batch 2: 2 steps per epoch, so step 3 is in the second epoch (lr * 0.75).
    straight = train(_config(dataset_dir, tmp_path / "straight", steps=3,
                             val_pairs=[(dataset_dir / "vi" / "00000.png", dataset_dir / "ir" / "00000.jpg")]))
    assert straight["step"] == 3 and np.isfinite(straight["loss"])
    assert set(straight["val"]) == {"vif", "qabf", "ssim"}
    log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]
    assert log[-2]["lr"] == pytest.approx(0.75e-4)
    assert torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["step"] == 3
    from fusionmamba_triton.inference import load_model

    assert load_model(tmp_path / "straight" / "last.pt").config["dims"] == TINY["dims"]  # usable as --weights

    train(_config(dataset_dir, tmp_path / "resumed", steps=2))
    state = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert state["step"] == 2 and {"model", "optimizer", "scheduler", "rng"} <= set(state)
    resumed = train(_config(dataset_dir, tmp_path / "resumed", steps=3, resume="auto"))
    assert resumed["step"] == 3

    expected, actual = _weights(tmp_path / "straight" / "final"), _weights(tmp_path / "resumed" / "final")
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    initial = FusionMamba.from_preset("base", **TINY).state_dict()
    assert any(not torch.equal(initial[k], expected[k]) for k in expected if "weight" in k)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes_end_with_the_same_weights(dataset_dir, tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), "-m", "fusionmamba_triton", "train",
        "--a-dir", str(dataset_dir / "vi"), "--b-dir", str(dataset_dir / "ir"), "-o", str(out),
        "--model-config", json.dumps(TINY), "--crop", "64", "--batch-size", "1", "--steps", "2",
        "--device", "cpu", "--workers", "0", "--weights-digest",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    digests = [(out / f"weights_rank{r}.sha256").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]
    final = _weights(out / "final")
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2
    assert not any(k.startswith("module.") for k in final)


def test_cli_train_bad_input_is_one_line(dataset_dir, tmp_path, capsys):
    from fusionmamba_triton.cli import main

    save_image(dataset_dir / "vi" / "odd.png", np.zeros((10, 12)))
    save_image(dataset_dir / "ir" / "odd.png", np.zeros((11, 12)))
    base = ["train", "--data", str(dataset_dir), "-o", str(tmp_path / "run"), "--model-config", json.dumps(TINY),
            "--crop", "64", "--steps", "1", "--device", "cpu", "--workers", "0"]
    assert main(base) == 1
    err = capsys.readouterr().err.strip()
    assert "odd.png" in err and "differ in size" in err and len(err.splitlines()) == 1
    (dataset_dir / "ir" / "odd.png").unlink()

    wrong = tmp_path / "wrong.pt"
    wide = {**TINY, "dims": [24, 48, 96, 192], "dims_decoder": [192, 96, 48, 24]}
    torch.save({"model": FusionMamba(**wide).state_dict(), "step": 1}, wrong)
    assert main(base + ["--resume", str(wrong)]) == 1
    err = capsys.readouterr().err.strip()
    assert str(wrong) in err and len(err.splitlines()) == 1
    assert main(base + ["--val-metrics", "nope"]) == 1
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "run" / "last.pt").exists()


# ---------------------------------------------------------------------- recipe options
def test_loss_on_unclamped_gives_clipped_pixels_a_gradient():
    """Bright inputs push the official head (+ 2 * (x1 + x2)) above 1 everywhere: clipped, nothing learns."""
    from fusionmamba_triton.losses import FusionLoss
    from fusionmamba_triton.train import compute_loss

    torch.manual_seed(0)
    model = FusionMamba(**TINY).train()
    a, b = torch.full((1, 1, 64, 64), 0.9), torch.full((1, 1, 64, 64), 0.8)
    a[..., ::2, :] -= 0.1  # some texture for the loss terms
    grads = {}
    for loss_on in ("clamped", "unclamped"):
        model.zero_grad(set_to_none=True)
        loss, terms = compute_loss(model, FusionLoss("official"), a, b, loss_on)
        loss.backward()
        grads[loss_on] = max(float(p.grad.abs().max()) if p.grad is not None else 0.0 for p in model.parameters())
        assert set(terms) == {"intensity", "texture", "ssim"}
    assert grads["clamped"] == 0.0
    assert grads["unclamped"] > 1e-4


def test_cached_dataset_gives_the_same_items_without_reading_files(dataset_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(dataset_dir, copy)
    pairs, _ = find_pairs(copy / "vi", copy / "ir")
    plain = PairDataset(pairs, crop=64, seed=5)
    cached = PairDataset(pairs, crop=64, seed=5, cache=True)
    assert plain.cache_bytes == 0 and cached.cache_bytes == 4 * 2 * 70 * 80 * 4
    expected = {(e, i): (plain.set_epoch(e), plain[i])[1] for e in (0, 3) for i in range(4)}
    shutil.rmtree(copy)  # the cache needs no file any more
    for (epoch, index), (a, b) in expected.items():
        cached.set_epoch(epoch)
        got = cached[index]
        assert torch.equal(got[0], a) and torch.equal(got[1], b), (epoch, index)


def test_validate_runs_in_eval_mode_without_gradients():
    from fusionmamba_triton.train import validate

    torch.manual_seed(0)
    model = FusionMamba(**TINY).train()
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append((module.training, torch.is_grad_enabled())))
    rng = np.random.default_rng(0)
    images = [(rng.random((48, 56)).astype(np.float32), rng.random((48, 56)).astype(np.float32)) for _ in range(2)]
    scores = validate(model, images, ["ssim", "qabf"])
    assert seen == [(False, False)] * 2
    assert model.training  # restored
    assert set(scores) == {"ssim", "qabf"} and all(np.isfinite(v) for v in scores.values())


def test_cli_train_recipe_options_keep_the_best_checkpoint(dataset_dir, tmp_path, monkeypatch):
    from fusionmamba_triton.cli import main

    calls = []
    set_threads = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), set_threads(n)))
    before = torch.get_num_threads()
    out = tmp_path / "run"
    args = ["train", "--data", str(dataset_dir), "-o", str(out), "--model-config", json.dumps(TINY), "--crop", "64",
            "--steps", "3", "--batch-size", "2", "--device", "cpu", "--workers", "0", "--lr", "1e-3",
            "--val-a", str(dataset_dir / "vi"), "--val-b", str(dataset_dir / "ir"), "--val-every", "1",
            "--val-metrics", "ssim", "--keep-best", "vif,ssim", "--loss-on", "unclamped", "--cache-images",
            "--threads", "2", "--log-every", "1"]
    assert main(args) == 0
    assert before == 1 and calls == [2, 1] and torch.get_num_threads() == 1  # set for the run, then restored

    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["cached_pairs"] == 4
    reference = next(r["val_reference"]["average"] for r in log if "val_reference" in r)
    assert set(reference) == {"ssim", "vif"}
    vals = [r for r in log if "val" in r]
    assert [r["step"] for r in vals] == [1, 2, 3]
    steps = [r for r in log if "loss" in r]
    assert all(r["data_seconds"] >= 0 and r["step_seconds"] > 0 for r in steps)
    for r in vals:
        assert r["val_seconds"] > 0 and set(r["val"]) == {"ssim", "vif"}
        ratios = [r["val"][m] / reference[m] for m in ("vif", "ssim")]
        assert r["val_score"] == pytest.approx(sum(ratios) / 2)
        assert r["val_ratio"]["vif"] == pytest.approx(ratios[0])
    best_step = max(vals, key=lambda r: r["val_score"])["step"]
    assert [r["step"] for r in vals if r["best"]][-1] == best_step
    best = json.loads((out / "best.json").read_text())
    assert best["step"] == best_step and best["keep_best"] == ["vif", "ssim"]
    assert (out / "best" / "model.safetensors").is_file() and (out / "final" / "model.safetensors").is_file()
    config = torch.load(out / "last.pt", weights_only=True)["train_config"]
    assert config["loss_on"] == "unclamped" and config["cache_images"] is True


def test_keep_best_needs_validation_pairs(dataset_dir, tmp_path, capsys):
    from fusionmamba_triton.cli import main

    base = ["train", "--data", str(dataset_dir), "-o", str(tmp_path / "run"), "--model-config", json.dumps(TINY),
            "--crop", "64", "--steps", "1", "--device", "cpu", "--workers", "0"]
    assert main(base + ["--keep-best", "vif"]) == 1
    assert "keep_best needs validation pairs" in capsys.readouterr().err
    assert main(base + ["--keep-best", "nope", "--val-a", str(dataset_dir / "vi"), "--val-b", str(dataset_dir / "ir")]) == 1
    assert "--keep-best: unknown metric(s) nope" in capsys.readouterr().err
    with pytest.raises(ValueError, match="loss_on"):
        train(_config(dataset_dir, tmp_path / "run", loss_on="raw"))
