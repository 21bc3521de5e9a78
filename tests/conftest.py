import os

import torch

# Without a GPU, the Triton kernels run on CPU tensors through Triton's interpreter. The variable
# must be set before hpm_kernels (which defines the kernels) is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from hypothesis import settings

settings.register_profile("ci", deadline=None, max_examples=60, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def gen() -> torch.Generator:
    """A generator with a fresh seed per test, printed on failure so a case can be replayed."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"generator seed: {seed}")
    return torch.Generator().manual_seed(seed)
