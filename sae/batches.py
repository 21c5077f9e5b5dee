"""Turn whatever a data source yields into the ``(x_in, x_out)`` pair a trainer step needs.

A batch is a Tensor ``[n, d_in]`` (an SAE: x_out = x_in), a pair ``(x_in, x_out)`` (a
transcoder), or an `ActivationBatch`, from which ``config.site_in`` (and ``site_out`` for a
transcoder) are read; an ActivationBatch holding a single site may omit the config's site.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mechscope.sae.config import DictionaryConfig


def split_batch(batch: Any, site_in: str = "", site_out: str = "", transcoder: bool = False
                ) -> tuple[Tensor, Tensor]:
    """``(x_in, x_out)`` of a Tensor, a pair or an `ActivationBatch` (rows flattened to 2-D)."""
    from mechscope.interp.activations import ActivationBatch

    if isinstance(batch, ActivationBatch):
        x_in = _site(batch, site_in, "site_in")
        x_out = _site(batch, site_out, "site_out") if transcoder else x_in
    elif isinstance(batch, Tensor):
        if transcoder:
            raise ValueError("a transcoder needs (x_in, x_out) pairs or an ActivationBatch with "
                             "site_in and site_out; the source yielded a single Tensor")
        x_in = x_out = batch
    elif isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(b, Tensor) for b in batch):
        x_in, x_out = batch
    else:
        raise TypeError(f"a batch must be a Tensor [n, d_in], a pair (x_in, x_out) of Tensors or "
                        f"an ActivationBatch; got {type(batch).__name__}")
    if x_in.shape[0] != x_out.shape[0]:
        raise ValueError(f"x_in has {x_in.shape[0]} rows but x_out has {x_out.shape[0]}")
    return x_in.reshape(x_in.shape[0], -1), x_out.reshape(x_out.shape[0], -1)


def as_pair(batch: Any, cfg: DictionaryConfig, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """`split_batch` with the config's sites, checked against its widths, cast to ``dtype``."""
    x_in, x_out = split_batch(batch, cfg.site_in, cfg.site_out, cfg.transcoder)
    if x_in.shape[1] != cfg.d_in or x_out.shape[1] != cfg.d_output:
        raise ValueError(f"batch widths (x_in {x_in.shape[1]}, x_out {x_out.shape[1]}) do not match "
                         f"config d_in={cfg.d_in}, d_out={cfg.d_output}")
    return x_in.to(dtype), x_out.to(dtype)


def _site(batch: Any, site: str, field: str) -> Tensor:
    if not site:
        if len(batch.sites) == 1:
            return batch.acts[batch.sites[0]]
        raise ValueError(f"config field {field} is empty but the ActivationBatch holds sites "
                         f"{', '.join(map(str, batch.sites))}; name one")
    return batch[site]
