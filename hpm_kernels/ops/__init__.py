"""The ``torch.ops.hpm`` custom ops and their public wrappers, one module per op."""
