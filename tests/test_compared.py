"""The cost-only architectures of the compared methods build and run with the right output shape."""
import pytest
import torch

from benchmarks.compared import COMPARED, IFT


@pytest.mark.parametrize("name", sorted(COMPARED), ids=str)
@pytest.mark.parametrize("size", [(32, 48), (40, 24)], ids=["32x48", "40x24"])
def test_forward_shape(name, size):
    torch.manual_seed(0)
    model = IFT(img_size=size, widths=(16, 24, 32, 40)) if name == "IFT" else COMPARED[name]()
    x1, x2 = torch.rand(1, 1, *size), torch.rand(1, 1, *size)
    with torch.no_grad():
        out = model.eval()(x1, x2)
    channels = 3 if name == "IFCNN" else 1
    assert out.shape == (1, channels, *size)
    assert torch.isfinite(out).all()
