"""Where and how tensors run: device choice, precision (AMP, bf16), torch.distributed.

May import: core.
"""
