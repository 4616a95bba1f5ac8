"""What every numba CPU kernel shares: the threading layer, the compile flags and the thread count."""
from __future__ import annotations

import numba

# numba's own thread pool: its OpenMP layer resets torch's thread count (they share libgomp's settings)
# and leaves spinning threads that compete with torch's pool for the cores.
if numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER = "workqueue"

# reassoc/contract: vectorised sums and fused multiply-adds. error_model="numpy": no Python
# ZeroDivisionError check, whose branch stops a loop with a division from vectorising.
JIT_FLAGS = dict(fastmath={"reassoc", "contract"}, error_model="numpy")


def use_torch_thread_count() -> None:
    """Use as many numba threads as torch does, so one setting (torch.set_num_threads) rules both."""
    import torch

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
