"""The checkpoints shipped with the package: the per-task registry, strict load, from_pretrained(name), CPU
fusion, the CLI default and its one-line note, and their scores on a sample pair, pinned so that a silent
change of quality fails a test.

After replacing or adding a bundled checkpoint, print its new scores and paste them into
PINNED_SCORES (one edit):

    python -m tests.test_bundled
"""
import functools
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import fusionmamba_triton
from fusionmamba_triton import model as model_module
from fusionmamba_triton.cli import main
from fusionmamba_triton.data import TASKS
from fusionmamba_triton.inference import bundled_weights, default_weights, fuse, load_model
from fusionmamba_triton.imaging import load_image, sample_pair
from fusionmamba_triton.metrics import evaluate
from fusionmamba_triton.model import (BUNDLED_CHECKPOINTS, DEFAULT_CHECKPOINT, PRESETS, TASK_CHECKPOINTS, FusionMamba,
                                      bundled_checkpoint, bundled_preset, task_checkpoint)
from tests.helpers import TINY

# checkpoint name -> the bundled sample pair it is scored on, and its scores there (the paper's six
# metrics, canonical convention, the fused float image on 0-255). Printed by `python -m tests.test_bundled`.
PINNED_SCORES = {
    "ir-vis-medium": {"pair": "tno_05", "scores": {"vif": 0.413225, "scd": 1.78703, "qabf": 0.390927, "sf": 13.0592,
                                                   "ms_ssim": 0.644649, "fmi_edge": 0.839988}},
    "medical-medium": {"pair": "itk_brain", "scores": {"vif": 0.379501, "scd": 1.42982, "qabf": 0.443657,
                                                       "sf": 41.0298, "ms_ssim": 0.527665, "fmi_edge": 0.84978}},
    "pet-medium": {"pair": "itk_brain", "scores": {"vif": 0.519319, "scd": 1.15602, "qabf": 0.494422, "sf": 42.1819,
                                                   "ms_ssim": 0.47906, "fmi_edge": 0.853033}},
}
PINNED_METRICS = ("vif", "scd", "qabf", "sf", "ms_ssim", "fmi_edge")
PIN_TOLERANCE = 5e-4  # relative: far above fp32 noise across torch builds, far below any retraining


@functools.lru_cache(maxsize=None)
def fused_sample(checkpoint: str, pair: str):
    """(a, b, fused) of a bundled sample pair fused by a bundled checkpoint on the CPU "torch" backend."""
    model = FusionMamba.from_pretrained(checkpoint, backend="torch")
    a, b = (load_image(path) for path in sample_pair(pair))
    return a, b, fuse(model, a, b)


def sample_scores(checkpoint: str, pair: str) -> dict[str, float]:
    a, b, fused = fused_sample(checkpoint, pair)
    return evaluate(a * 255.0, b * 255.0, fused * 255.0, list(PINNED_METRICS))


@pytest.fixture(autouse=True)
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    return FusionMamba.from_pretrained(DEFAULT_CHECKPOINT, backend="torch")


def test_registry_points_at_the_packaged_files():
    assert set(TASK_CHECKPOINTS) == set(TASKS)  # every task has bundled weights
    assert set(TASK_CHECKPOINTS.values()) <= set(BUNDLED_CHECKPOINTS)
    for name, description in BUNDLED_CHECKPOINTS.items():
        folder = Path(bundled_checkpoint(name))
        assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
        assert folder.parent == Path(fusionmamba_triton.__file__).parent / "assets" / "weights"
        assert "trained" in description and "data" in description  # what the CLI line tells the user
        assert bundled_preset(name) in PRESETS
    for task, name in TASK_CHECKPOINTS.items():
        assert task_checkpoint(task) == name
        assert default_weights(task) == Path(bundled_checkpoint(name))
    assert TASK_CHECKPOINTS["gfp-pc"] == TASK_CHECKPOINTS["pet-mri"]  # no GFP data: the closest task's weights
    assert DEFAULT_CHECKPOINT == TASK_CHECKPOINTS["ir-vis"]


@pytest.fixture
def registry_with_a_task_checkpoint(tmp_path, monkeypatch):
    """The registry after shipping "ct-mri-tiny" for CT-MRI: a folder under assets/weights/ plus its registry lines."""
    weights_dir = tmp_path / "weights"
    for name in BUNDLED_CHECKPOINTS:
        shutil.copytree(bundled_checkpoint(name), weights_dir / name)
    torch.manual_seed(0)
    FusionMamba(**TINY).half().save_pretrained(weights_dir / "ct-mri-tiny")
    monkeypatch.setattr(model_module, "BUNDLED_WEIGHTS_DIR", str(weights_dir))
    monkeypatch.setitem(BUNDLED_CHECKPOINTS, "ct-mri-tiny", "a test checkpoint, trained on nothing")
    monkeypatch.setitem(TASK_CHECKPOINTS, "ct-mri", "ct-mri-tiny")
    return weights_dir


def test_each_task_loads_its_registered_checkpoint(registry_with_a_task_checkpoint, tmp_path, capsys):
    assert default_weights("ct-mri") == registry_with_a_task_checkpoint / "ct-mri-tiny"
    assert bundled_weights("ct-mri") == (registry_with_a_task_checkpoint / "ct-mri-tiny", "ct-mri-tiny")
    assert FusionMamba.from_pretrained("ct-mri-tiny").config["dims"] == TINY["dims"]
    assert load_model(None, task="ct-mri").config["dims"] == TINY["dims"]
    assert load_model(None, task="pet-mri").config["dims"] == PRESETS[bundled_preset(TASK_CHECKPOINTS["pet-mri"])]["dims"]
    with pytest.raises(ValueError, match="no bundled weights for preset 'small'.*'ct-mri-tiny'"):
        load_model(None, preset="small", task="ct-mri")

    a_path, b_path = sample_pair("itk_brain")
    out = tmp_path / "fused.png"
    assert main(["fuse", str(a_path), str(b_path), "-o", str(out), "--task", "ct-mri", "--device", "cpu"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fusionmamba fuse: using the bundled checkpoint 'ct-mri-tiny' for ct-mri: "
                   "a test checkpoint, trained on nothing"]
    assert load_image(out).shape == load_image(a_path).shape


def test_a_task_without_bundled_weights_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.delitem(TASK_CHECKPOINTS, "gfp-pc")
    with pytest.raises(ValueError, match="no bundled weights for task 'gfp-pc'.*--weights"):
        default_weights("gfp-pc")
    a_path, b_path = sample_pair("itk_brain")
    out = tmp_path / "fused.png"
    assert main(["fuse", str(a_path), str(b_path), "-o", str(out), "--task", "gfp-pc", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no bundled weights for task 'gfp-pc'" in err[0] and "--weights" in err[0], err
    assert not out.exists()
    untrained = load_model(None, preset="small", task="gfp-pc", allow_untrained=True)  # still possible on request
    assert untrained.config["dims"] == PRESETS["small"]["dims"]


def test_unknown_name_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="no bundled checkpoint named 'huge'"):
        FusionMamba.from_pretrained("huge")


def test_loads_strictly_as_its_preset(model):
    preset = bundled_preset(DEFAULT_CHECKPOINT)
    assert {k: model.config[k] for k in PRESETS[preset]} == PRESETS[preset]
    strict = FusionMamba.from_pretrained(bundled_checkpoint(), preset=preset)  # strict=True inside
    for (name, a), (_, b) in zip(model.state_dict().items(), strict.state_dict().items()):
        assert torch.equal(a, b), name
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not model.training


def test_fuses_the_bundled_sample_on_cpu():
    a, b, fused = fused_sample(DEFAULT_CHECKPOINT, "tno_05")
    assert fused.shape == a.shape and fused.dtype == np.float32
    assert np.isfinite(fused).all() and fused.min() >= 0 and fused.max() <= 1
    distances = [float(np.abs(fused - source).mean()) for source in (a, b)]
    assert min(distances) > 0.01, distances


def test_load_model_defaults_to_it(model):
    loaded = load_model(None, backend="torch")
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_cli_fuse_without_weights_uses_it_and_says_so(tmp_path, capsys):
    a_path, b_path = sample_pair("itk_brain")
    out = tmp_path / "fused.png"
    assert main(["fuse", str(a_path), str(b_path), "-o", str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"bundled checkpoint {DEFAULT_CHECKPOINT!r} for ir-vis (the default; pass --task)" in err[0]
    assert BUNDLED_CHECKPOINTS[DEFAULT_CHECKPOINT] in err[0]
    fused = load_image(out)
    assert fused.shape == load_image(a_path).shape
    assert os.path.getsize(out) > 0


def test_other_presets_do_not_get_the_bundled_weights():
    """The bundled checkpoints have their own presets; asking for another preset without weights says so."""
    with pytest.raises(ValueError, match="no bundled weights for preset 'base'.*--weights"):
        load_model(None, preset="base")
    preset = bundled_preset(DEFAULT_CHECKPOINT)
    assert load_model(None, preset=preset).config["dims"] == PRESETS[preset]["dims"]


def test_the_note_names_only_weights_that_were_loaded(capsys):
    """--preset tiny --allow-untrained gets a random model: no note claims the bundled weights."""
    from fusionmamba_triton.cli import _say_bundled

    name, preset = DEFAULT_CHECKPOINT, bundled_preset(DEFAULT_CHECKPOINT)
    assert bundled_weights("ir-vis", "tiny") == (None, "there are no bundled weights for preset 'tiny' "
                                                       f"(ir-vis ships {name!r}, preset {preset!r})")
    _say_bundled("fuse", "ir-vis", "tiny", given_task=True)
    assert capsys.readouterr().err == ""
    _say_bundled("fuse", "ir-vis", preset, given_task=True)
    assert capsys.readouterr().err.startswith(f"fusionmamba fuse: using the bundled checkpoint {name!r} for ir-vis: ")


@pytest.mark.parametrize("checkpoint", sorted(BUNDLED_CHECKPOINTS))
def test_scores_on_a_sample_pair_are_pinned(checkpoint):
    assert checkpoint in PINNED_SCORES, (
        f"bundled checkpoint {checkpoint!r} has no pinned scores: run `python -m tests.test_bundled` "
        "and add its entry to PINNED_SCORES")
    pinned = PINNED_SCORES[checkpoint]
    scores = sample_scores(checkpoint, pinned["pair"])
    assert set(pinned["scores"]) == set(PINNED_METRICS)
    for name, expected in pinned["scores"].items():
        assert scores[name] == pytest.approx(expected, rel=PIN_TOLERANCE), (
            f"{checkpoint} on {pinned['pair']}: {name} is {scores[name]:.6g}, pinned {expected:.6g}; if the "
            "checkpoint was replaced on purpose, re-pin with `python -m tests.test_bundled`")


if __name__ == "__main__":
    print("PINNED_SCORES = {")
    for name in sorted(BUNDLED_CHECKPOINTS):
        pair = PINNED_SCORES.get(name, {}).get("pair", "tno_05")
        scores = ", ".join(f'"{k}": {v:.6g}' for k, v in sample_scores(name, pair).items())
        print(f'    "{name}": {{"pair": "{pair}", "scores": {{{scores}}}}},')
    print("}")
