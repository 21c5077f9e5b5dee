"""Users' own dictionaries as mechscope `Dictionary` values: SAELens SAEs and sparsify coders.

`as_dictionary(obj)` returns a mechscope dictionary unchanged and wraps

* an in-memory ``sae_lens.SAE`` of any inference architecture — standard (ReLU), top-k,
  batch-top-k (loaded as top-k / JumpReLU by SAELens), JumpReLU, gated, matching pursuit,
  transcoders and JumpReLU transcoders — in `SAELensDictionary`;
* a sparsify ``SparseCoder`` (top-k or group-max activation, SAE or transcoder) in
  `SparsifyDictionary`.

Both encode with the library's own ``encode`` (so every activation rule, threshold and input
preprocessing is the library's); SAELens decodes with its own ``decode``, sparsify with the same
sum its ``decode`` computes (``sum_j values_j W_dec[indices_j] + b_dec``). The code is the
library's code as a `SparseCode`. ``directions`` are read off the decoder as
``decode(e_i) - decode(0)`` (exact for every affine decoder, including SAELens' decoder-norm
rescaling), and ``b_dec`` is ``decode(0)``, so the splice identity
``decode(code) = code.dense() @ directions + decode(0)`` holds for what circuits trace.

Refused, with the reason: skip transcoders (their output depends on the input, not only on the
code) and SAELens run-time input normalisation (``layer_norm`` / ``constant_norm_rescale``: the
decoder's output depends on the norm of the input it encoded).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechscope.kernels import SparseCode, sparse_decode

_CHUNK = 4096


class AdapterError(TypeError):
    """An object that cannot be used as a `Dictionary`, with what is accepted instead."""


def as_dictionary(obj: Any) -> Any:
    """``obj`` as a mechscope `Dictionary`: mechscope dictionaries pass through; SAELens SAEs and
    sparsify coders are wrapped; anything else is an `AdapterError` naming what is accepted."""
    if isinstance(obj, (SAELensDictionary, SparsifyDictionary)):
        return obj
    kind = type(obj).__module__.split(".")[0]
    if kind == "sae_lens":
        return SAELensDictionary(obj)
    if kind == "sparsify":
        return SparsifyDictionary(obj)
    if all(hasattr(obj, a) for a in ("d_in", "d_dict", "encode")):
        return obj  # duck-typed: what each consumer needs beyond encode it checks itself
    raise AdapterError(
        f"{type(obj).__module__}.{type(obj).__name__} is not a dictionary: pass an object with the "
        f"mechscope.sae.dictionary.Dictionary protocol (e.g. from mechscope.sae.io.load_dictionary), "
        f"a sae_lens.SAE or a sparsify SparseCoder")


def _site(hook_name: Any) -> str:
    from mechscope.interp.sites import Site, SiteError

    try:
        return str(Site.parse(hook_name)) if hook_name else ""
    except SiteError:
        return ""


class _Affine:
    """``directions`` and ``b_dec`` read off any affine ``decode`` once, in chunks of latents."""

    d_dict: int
    _directions: Tensor | None = None

    def _decode_dense(self, dense: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def directions(self) -> Float[Tensor, "d_dict d_out"]:
        if self._directions is None:
            with torch.no_grad():
                zero = self.b_dec
                rows = []
                for s in range(0, self.d_dict, _CHUNK):
                    n = min(_CHUNK, self.d_dict - s)
                    eye = torch.zeros(n, self.d_dict, dtype=zero.dtype, device=zero.device)
                    eye[torch.arange(n), torch.arange(s, s + n)] = 1
                    rows.append(self._decode_dense(eye) - zero)
                self._directions = torch.cat(rows)
        return self._directions

    @property
    def b_dec(self) -> Float[Tensor, "d_out"]:
        with torch.no_grad():
            return self._decode_dense(torch.zeros(1, self.d_dict, dtype=self._dtype, device=self._device))[0]


class SAELensDictionary(_Affine):
    """An in-memory ``sae_lens.SAE`` as a `Dictionary` (see the module docstring)."""

    def __init__(self, sae: Any) -> None:
        name = type(sae).__name__
        if "Skip" in name or getattr(sae, "W_skip", None) is not None:
            raise AdapterError(f"{name}: a skip transcoder's output depends on its input, not only on "
                               f"the code, so it is not a Dictionary (decode(code) -> x_out)")
        norm = getattr(sae.cfg, "normalize_activations", "none")
        if norm in ("layer_norm", "constant_norm_rescale"):
            raise AdapterError(f"{name}: normalize_activations={norm!r} rescales the output by the "
                               f"input's norm at run time; fold or drop the normalisation first")
        self.sae = sae
        self.d_in = int(sae.cfg.d_in)
        self.d_dict = int(sae.cfg.d_sae)
        self.d_out = int(getattr(sae.cfg, "d_out", sae.cfg.d_in))
        meta = getattr(sae.cfg, "metadata", None)
        self.site_in = _site(getattr(meta, "hook_name", None))
        self.site_out = _site(getattr(meta, "hook_name_out", None)) or (self.site_in if self.d_out == self.d_in else "")
        self._dtype, self._device = sae.W_dec.dtype, sae.W_dec.device

    @contextmanager
    def _flat(self) -> Iterator[None]:
        """SAELens reshapes ``hook_z`` inputs from heads to one vector itself when asked to; the
        protocol's inputs are already flat, so that reshaping is off during our calls."""
        saved = self.sae.reshape_fn_in, self.sae.reshape_fn_out
        self.sae.reshape_fn_in, self.sae.reshape_fn_out = (lambda x: x), (lambda x, d_head: x)
        try:
            yield
        finally:
            self.sae.reshape_fn_in, self.sae.reshape_fn_out = saved

    def encode(self, x: Float[Tensor, "n d_in"]) -> SparseCode:
        with self._flat():
            dense = self.sae.encode(x.to(self._device, self._dtype))
        return SparseCode.from_dense(dense)

    def _decode_dense(self, dense: Tensor) -> Tensor:
        with self._flat():
            return self.sae.decode(dense.to(self._device, self._dtype))

    def decode(self, code: SparseCode) -> Float[Tensor, "n d_out"]:
        return self._decode_dense(code.dense(self.d_dict))

    def __repr__(self) -> str:
        return f"SAELensDictionary({type(self.sae).__name__}, d_in={self.d_in}, d_dict={self.d_dict}, site={self.site_in!r})"


class SparsifyDictionary(_Affine):
    """A sparsify ``SparseCoder`` as a `Dictionary`: its own top-k / group-max encoder, its decoder."""

    def __init__(self, coder: Any, site_in: str = "", site_out: str = "") -> None:
        if getattr(coder, "W_skip", None) is not None:
            raise AdapterError("a sparsify coder with a skip connection depends on its input at "
                               "decode time, so it is not a Dictionary (decode(code) -> x_out)")
        if getattr(coder, "W_dec", None) is None:
            raise AdapterError("this sparsify coder was built without a decoder (decoder=False)")
        self.coder = coder
        self.d_in = int(coder.d_in)
        self.d_dict = int(coder.num_latents)
        self.d_out = int(coder.W_dec.shape[1])
        self.site_in, self.site_out = site_in, site_out or site_in
        self._dtype, self._device = coder.W_dec.dtype, coder.W_dec.device

    def encode(self, x: Float[Tensor, "n d_in"]) -> SparseCode:
        out = self.coder.encode(x.to(self._device, self._dtype))
        return SparseCode(out.top_acts, out.top_indices.to(torch.int64))

    def _decode_dense(self, dense: Tensor) -> Tensor:
        # sparsify's decode takes (values, indices); a dense row is its own sparse code
        return dense.to(self._dtype) @ self.coder.W_dec + self.coder.b_dec

    def decode(self, code: SparseCode) -> Float[Tensor, "n d_out"]:
        # sparsify's own decode is this sum; its Triton path fails on CPU tensors when triton is
        # installed, so the same sum goes through mechscope's kernel dispatch
        return sparse_decode(SparseCode(code.values.to(self._dtype), code.indices), self.coder.W_dec, self.coder.b_dec)

    def __repr__(self) -> str:
        return f"SparsifyDictionary(d_in={self.d_in}, d_dict={self.d_dict}, k={self.coder.cfg.k})"


SAELENS_PREFIX = "sae_lens:"


def parse_saelens_spec(spec: str) -> tuple[str, str]:
    """``"sae_lens:RELEASE/SAE_ID"`` -> ``(RELEASE, SAE_ID)`` (SAE ids may contain ``/``)."""
    body = spec[len(SAELENS_PREFIX):] if spec.startswith(SAELENS_PREFIX) else spec
    release, sep, sae_id = body.partition("/")
    if not (release and sep and sae_id):
        raise ValueError(f"{spec!r}: a SAELens pretrained SAE is written 'sae_lens:RELEASE/SAE_ID', e.g. "
                         f"'sae_lens:gpt2-small-res-jb/blocks.0.hook_resid_pre'")
    return release, sae_id


def load_pretrained(spec: str, device: str = "cpu", dtype: str = "float32") -> SAELensDictionary:
    """A pretrained SAE from SAELens' directory of releases, through SAELens' own loader (which
    needs the Hugging Face hub, or its cache with ``HF_HUB_OFFLINE=1``), as a `Dictionary`."""
    from sae_lens import SAE

    release, sae_id = parse_saelens_spec(spec)
    try:
        sae = SAE.from_pretrained(release, sae_id, device=device, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - SAELens / the hub raise many types; name the input
        raise ValueError(f"SAELens could not load release {release!r}, SAE id {sae_id!r}: "
                         f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    return SAELensDictionary(sae)
