"""fusionmamba_triton: FusionMamba image fusion on Triton kernels, with a fast PyTorch CPU path."""
import re
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (ROOT / "fusionmamba_triton" / "__init__.py").read_text()).group(1)

TEST_REQUIRES = [
    "pytest>=7",
    "pytest-benchmark>=4",
    "scikit-image>=0.19",
    "sewar>=0.4.5",
    "pytorch-msssim>=1.0",
]
BENCH_REQUIRES = ["pytest-benchmark>=4", "matplotlib>=3.5"]

setup(
    name="fusionmamba_triton",
    version=VERSION,
    description="FusionMamba multimodal image fusion with hand-written Triton kernels and a fast CPU path",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # kernels/ lives at the top of the repository but installs as fusionmamba_triton.kernels:
    # a top-level module named `kernels` would clash with other distributions.
    packages=[
        "fusionmamba_triton",
        "fusionmamba_triton.ops",
        "fusionmamba_triton.layers",
        "fusionmamba_triton.metrics",
        "fusionmamba_triton.kernels",
    ],
    package_dir={"fusionmamba_triton.kernels": "kernels"},
    package_data={"fusionmamba_triton": ["assets/*", "assets/**/*"]},
    install_requires=[
        "torch>=2.1",
        "numba>=0.59",  # the compiled CPU selective scan
        "triton>=3.0; platform_system == 'Linux'",
        "einops>=0.6",
        "numpy>=1.22",
        "pillow>=9",
        "scipy>=1.8",
        "PyWavelets>=1.1",
        "safetensors>=0.4",
        "tqdm>=4.60",
    ],
    extras_require={"test": TEST_REQUIRES, "bench": BENCH_REQUIRES},
    entry_points={"console_scripts": ["fusionmamba=fusionmamba_triton.cli:main"]},
    license="MIT",
)
