"""recsys_core: the library behind the batch recommender platform."""

import os

# torch's OpenMP threads otherwise spin for a while after each parallel region (a scoring GEMM),
# taking the cores from the threads that select the top-K right after it. OpenMP reads this once,
# when torch loads, so it is set here: every entry point imports recsys_core before torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
