import torch


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 if any input is float64, else float32: the accumulation (and loss) dtype."""
    return torch.float64 if torch.float64 in dtypes else torch.float32
