"""mechscope.kernels: top-k SAE encoder and sparse decoder (eager reference + Triton kernels).

``topk_encode(x, W_enc, b_enc, k) -> SparseCode`` and ``sparse_decode(code, W_dec, b_dec)``
with backwards that touch only the k selected latents; ``available()`` says which path runs.
Importing this package never imports triton.
"""

from mechscope.kernels.code import SparseCode
from mechscope.kernels.dispatch import KernelBackend, available, sparse_decode, topk_encode

__all__ = ["KernelBackend", "SparseCode", "available", "sparse_decode", "topk_encode"]
