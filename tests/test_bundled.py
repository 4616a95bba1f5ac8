"""The checkpoint shipped with the package: strict load, from_pretrained("small"), CPU fusion, the CLI default."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import fusionmamba_triton
from fusionmamba_triton.cli import main
from fusionmamba_triton.inference import default_weights, fuse, load_model
from fusionmamba_triton.imaging import load_image, sample_pair
from fusionmamba_triton.model import BUNDLED_CHECKPOINTS, DEFAULT_CHECKPOINT, PRESETS, FusionMamba, bundled_checkpoint


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
    assert DEFAULT_CHECKPOINT in BUNDLED_CHECKPOINTS
    folder = Path(bundled_checkpoint(DEFAULT_CHECKPOINT))
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert folder.parent == Path(fusionmamba_triton.__file__).parent / "assets" / "weights"
    for task in ("ir-vis", "ct-mri", "pet-mri", "spect-mri"):
        assert default_weights(task) == folder


def test_unknown_name_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="no bundled checkpoint named 'huge'"):
        FusionMamba.from_pretrained("huge")


def test_loads_strictly_as_the_small_preset(model):
    small = PRESETS["small"]
    assert {k: model.config[k] for k in small} == small
    strict = FusionMamba.from_pretrained(bundled_checkpoint(), preset="small")  # strict=True inside
    for (name, a), (_, b) in zip(model.state_dict().items(), strict.state_dict().items()):
        assert torch.equal(a, b), name
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not model.training


def test_fuses_the_bundled_sample_on_cpu(model):
    a_path, b_path = sample_pair("tno_05")
    a, b = load_image(a_path), load_image(b_path)
    fused = fuse(model, a, b)
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
    assert len(err) == 1 and "bundled checkpoint 'small'" in err[0], err
    fused = load_image(out)
    assert fused.shape == load_image(a_path).shape
    assert os.path.getsize(out) > 0


def test_other_presets_do_not_get_the_bundled_weights():
    """The bundled checkpoint is the small preset; asking for another preset without weights says so."""
    with pytest.raises(ValueError, match="no bundled weights for preset 'base'.*--weights"):
        load_model(None, preset="base")
    assert load_model(None, preset="small").config["dims"] == [16, 32, 64, 128]
