"""`python -m fusionmamba_triton ...` runs the fusionmamba command (also under torchrun)."""
import sys

from .cli import main

sys.exit(main())
