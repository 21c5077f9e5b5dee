"""On-disk activation cache: an activation stream written once to safetensors shards.

Running the model is most of the cost of training a sparse dictionary on a small model, and a
sweep that trains many dictionaries on the same rows (or several passes over them) can read
them from disk instead. A cache folder holds

* ``shard_00000.safetensors, ...``: ``rows_per_shard`` rows each (the last may be shorter), with
  one tensor per site (``acts.L3.resid_post`` ``[rows, d_site]``) and the provenance vectors
  ``token_ids``, ``seq_index``, ``positions`` (``[rows]`` int64) of `ActivationBatch`;
* ``manifest.json``: format and version, model name, sites with their widths ``d``, dtype,
  rows per shard, total rows, the token stream's config, and per shard its file, rows, byte size
  and SHA-256.

Shards are written in stream order (no shuffling at build time) to a temporary name and
renamed into place (``os.replace`` is atomic on POSIX), and the manifest is written last the
same way, so a folder whose build died has no manifest and is never mistaken for a cache.

Shard bytes depend only on the rows (the safetensors header carries one metadata key: with
several, their order follows a per-process hash map), so identical rebuilds have identical
SHA-256s and a training run checkpointed on one build resumes on another. Readers check every
shard's size when opening and its SHA-256 the first time they load it; manifest entries must
name shard files of the cache folder itself.

`CachedActivations` reads a cache back as an `ActivationSource`: batches of rows, optionally
shuffled (shard order per epoch and rows within each shard, both by seeded permutations,
which is the usual two-level shuffle of shard-based loaders), with a position
``(epoch, shard, offset)`` that `state_dict`/`load_state_dict` save and restore exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mechscope.devices import DTYPES as _DTYPES
from mechscope.files import atomic_path, write_json
from mechscope.state import load_state, save_state
from mechscope.interp.activations import ActivationBatch
from mechscope.interp.models import Model
from mechscope.interp.sites import Site
from mechscope.interp.tokens import check_resume_state

if TYPE_CHECKING:
    from mechscope.interp.models import ModelLike
    from mechscope.interp.tokens import TokenStream

FORMAT = "mechscope-activation-cache"
VERSION = 1
MANIFEST = "manifest.json"
_SHARD_RE = re.compile(r"^shard_\d{5}\.safetensors(\.tmp)?$")
_PROVENANCE = ("token_ids", "seq_index", "positions")
_SHARD_FILE_RE = re.compile(r"^shard_\d{5}\.safetensors$")
_MANIFEST_KEYS = ("sites", "d", "dtype", "total_rows", "shards")
_SHARD_KEYS = ("file", "rows", "bytes", "sha256")


class CacheError(ValueError):
    """A folder that is not a complete, intact cache, or one that does not match what was asked."""


def _dtype_name(dtype: torch.dtype | str | None) -> str:
    from mechscope.devices import check_dtype_name

    try:
        return "float32" if dtype is None else check_dtype_name(dtype, "cache dtype")
    except ValueError as e:
        raise CacheError(str(e)) from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()




# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def _prepare_dir(out: Path, overwrite: bool) -> None:
    if (out / MANIFEST).exists():
        if not overwrite:
            raise CacheError(f"{out} already holds an activation cache; pass overwrite=True to replace it")
        (out / MANIFEST).unlink()  # first, so a crash below never leaves a manifest over mixed shards
    out.mkdir(parents=True, exist_ok=True)
    for f in out.iterdir():
        if _SHARD_RE.match(f.name) or f.name in (MANIFEST + ".tmp", BUILD_STATE):
            f.unlink()


def _write_shard(out: Path, index: int, rows: ActivationBatch, dtype: torch.dtype) -> dict[str, Any]:
    from safetensors.torch import save_file

    name = f"shard_{index:05d}.safetensors"
    tensors = {f"acts.{s}": a.detach().to("cpu", dtype).contiguous() for s, a in rows.acts.items()}
    tensors.update({k: getattr(rows, k).detach().to("cpu", torch.int64).contiguous() for k in _PROVENANCE})
    # one metadata key: safetensors keeps metadata in a hash map whose order differs per process,
    # so several keys would make identical rebuilds differ in bytes (and in SHA-256)
    meta = json.dumps({"format": FORMAT, "version": VERSION, "shard": index}, sort_keys=True)
    with atomic_path(out / name) as tmp:
        save_file(tensors, str(tmp), metadata={"mechscope": meta})
    return {"file": name, "rows": len(rows), "bytes": (out / name).stat().st_size, "sha256": _sha256(out / name)}


BUILD_STATE = "build_state.safetensors"


def write_cache(
    batches: Iterable[ActivationBatch],
    out_dir: str | os.PathLike,
    n_rows: int,
    rows_per_shard: int = 65536,
    dtype: torch.dtype | str | None = None,
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
    resume: bool = True,
    progress: bool = False,
) -> Path:
    """Write the first ``n_rows`` rows of ``batches`` (any `ActivationSource`) as a cache.

    ``meta`` (JSON-able: model name, token config, ...) goes into the manifest. If the source
    ends early, the cache holds the rows there were, with ``"exhausted": true``, and a warning.
    A complete cache is only replaced with ``overwrite=True``.

    Resuming a build that died: when the source can save its position (``state_dict`` /
    ``load_state_dict``), ``out_dir/build_state.safetensors`` records, after every shard that
    ends on a batch boundary, the shards written so far and the source's position. With
    ``resume``, a build of the same request (rows, shard size, dtype, sites, ``meta``) restarts
    from the last shard recorded there; anything else left in ``out_dir`` is replaced.
    """
    if n_rows < 1 or rows_per_shard < 1:
        raise CacheError(f"n_rows and rows_per_shard must be >= 1, got {n_rows}, {rows_per_shard}")
    out, name = Path(out_dir), _dtype_name(dtype)
    request = {"n_rows": n_rows, "rows_per_shard": rows_per_shard, "dtype": name, "meta": meta or {},
               "sites": [str(s) for s in getattr(batches, "sites", ())]}
    resumable = hasattr(batches, "state_dict") and hasattr(batches, "load_state_dict")
    restored = _restore_build(out, request, batches) if resume and resumable and not overwrite else None
    if restored is None:
        _prepare_dir(out, overwrite)
    shards: list[dict[str, Any]] = list(restored["shards"]) if restored else []
    pending: list[ActivationBatch] = []
    have, total = 0, sum(s["rows"] for s in shards)
    sites: tuple[Site, ...] | None = tuple(Site.parse(x) for x in restored["sites"]) if restored else None
    d: dict[str, int] = dict(restored["d"]) if restored else {}
    from tqdm.auto import tqdm

    bar = tqdm(total=n_rows, initial=total, disable=not progress, unit="rows", desc="cache", dynamic_ncols=True)

    def flush(n: int) -> None:
        nonlocal pending, have, total
        rows = ActivationBatch.concat(pending)
        shards.append(_write_shard(out, len(shards), rows.index(slice(0, n)), _DTYPES[name]))
        pending = [rows.index(slice(n, None))] if len(rows) > n else []
        have, total = have - n, total + n
        bar.update(n)
        if resumable and not pending:
            save_state(out / BUILD_STATE, {**request, "shards": shards, "sites_d": d,
                                           "site_order": [str(x) for x in sites], "source": batches.state_dict()})

    if total < n_rows and not (restored and restored["exhausted"]):
        for batch in batches:
            if sites is None:
                sites = batch.sites
                d = {str(s): int(a.shape[1]) for s, a in batch.acts.items()}
            batch = batch.index(slice(0, n_rows - total - have))
            pending.append(batch)
            have += len(batch)
            while have >= rows_per_shard:
                flush(rows_per_shard)
            if total + have >= n_rows:
                break
    if have:
        flush(have)
    bar.close()
    if not shards:
        raise CacheError("the activation source yielded no rows; nothing was cached")
    if total < n_rows:
        warnings.warn(f"activation source ended after {total} of {n_rows} requested rows", stacklevel=2)
    manifest = {
        "format": FORMAT, "version": VERSION, **(meta or {}),
        "sites": [str(s) for s in sites], "d": d, "dtype": name, "rows_per_shard": rows_per_shard,
        "total_rows": total, "requested_rows": n_rows, "exhausted": total < n_rows, "shards": shards,
    }
    write_json(out / MANIFEST, manifest, indent=1)
    (out / BUILD_STATE).unlink(missing_ok=True)
    return out


def _restore_build(out: Path, request: dict[str, Any], source: Any) -> dict[str, Any] | None:
    """The recorded progress of an unfinished build of the same request, its shards checked and
    the source moved to where it was; None when there is nothing (usable) to resume."""
    path = out / BUILD_STATE
    if (out / MANIFEST).exists() or not path.is_file():
        return None
    try:
        state = load_state(path)
    except ValueError:
        return None
    if any(state.get(k) != v for k, v in request.items()):
        return None
    for info in state["shards"]:
        f = out / info["file"]
        if not f.is_file() or f.stat().st_size != info["bytes"] or _sha256(f) != info["sha256"]:
            return None
    source.load_state_dict(state["source"])
    kept = {info["file"] for info in state["shards"]}
    for f in out.iterdir():  # shards written after the last recorded one are written again
        if _SHARD_RE.match(f.name) and f.name not in kept:
            f.unlink()
    return {"shards": state["shards"], "sites": state["site_order"], "d": state["sites_d"],
            "exhausted": False}


def build_cache(
    model: "ModelLike",
    token_stream: "TokenStream",
    sites: "Iterable[Site | str] | Site | str",
    out_dir: str | os.PathLike,
    n_tokens: int,
    rows_per_shard: int = 65536,
    model_batch_size: int = 8,
    dtype: torch.dtype | str | None = None,
    exclude_special: bool = True,
    device: torch.device | str = "cpu",
    overwrite: bool = False,
    resume: bool = True,
    progress: bool = False,
) -> Path:
    """Run ``model`` over ``token_stream`` and cache ``n_tokens`` rows at ``sites`` in ``out_dir``.

    This is ``mechscope cache --model M --sites ... --tokens N --out DIR``. Rows are in stream
    order; shuffle when reading (`CachedActivations(shuffle=True)`). The stream yields one shard
    per batch, so every shard is a resume point: a build killed half-way restarts (``resume``)
    from its last complete shard and writes the same bytes an uninterrupted build writes.
    """
    from mechscope.interp.stream import ActivationStream

    model = Model.wrap(model)
    stream = ActivationStream(model, token_stream, sites, batch_tokens=min(rows_per_shard, n_tokens),
                              model_batch_size=model_batch_size, shuffle_buffer=0,
                              exclude_special=exclude_special, device=device,
                              dtype=_DTYPES[_dtype_name(dtype)])
    meta = {"model": model.name, "tokens": token_stream.config(), "exclude_special": exclude_special}
    return write_cache(stream, out_dir, n_tokens, rows_per_shard, dtype, meta, overwrite, resume, progress)


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def read_manifest(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a complete cache; `CacheError` with the reason otherwise."""
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        hint = " (it has shards but no manifest: its build did not finish)" if any(
            _SHARD_RE.match(p.name) for p in Path(cache_dir).glob("shard_*")) else ""
        raise CacheError(f"{cache_dir} is not a mechscope activation cache: no {MANIFEST}{hint}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise CacheError(f"{path} must hold a JSON object")
    if manifest.get("format") != FORMAT:
        raise CacheError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("version") != VERSION:
        raise CacheError(f"{path}: cache version {manifest.get('version')!r}, this mechscope reads version {VERSION}")
    missing = [k for k in _MANIFEST_KEYS if k not in manifest]
    if missing:
        raise CacheError(f"{path} lacks the field(s) {', '.join(missing)} (damaged or hand-edited)")
    for i, shard in enumerate(manifest["shards"]):
        if not isinstance(shard, dict) or any(k not in shard for k in _SHARD_KEYS):
            raise CacheError(f"{path}: shard entry {i} needs the fields {', '.join(_SHARD_KEYS)}")
        # the manifest may come from anywhere: it names files in this folder, nothing else
        if not isinstance(shard["file"], str) or not _SHARD_FILE_RE.match(shard["file"]):
            raise CacheError(f"{path}: shard entry {i} names {shard['file']!r}, not a shard file of this "
                             "folder (expected shard_NNNNN.safetensors)")
    missing_d = [s for s in manifest["sites"] if s not in manifest["d"]]
    if missing_d or manifest["dtype"] not in _DTYPES:
        raise CacheError(f"{path}: no width d for sites {missing_d}" if missing_d else
                         f"{path}: dtype {manifest['dtype']!r} is not one of {', '.join(_DTYPES)}")
    rows = sum(s["rows"] for s in manifest["shards"])
    if rows != manifest["total_rows"]:
        raise CacheError(f"{path}: shards hold {rows} rows but total_rows is {manifest['total_rows']}")
    return manifest


class CachedActivations:
    """A cache folder as an `ActivationSource` of ``batch_tokens``-row `ActivationBatch`es.

    ``sites`` selects a subset of the cached sites (default all); ``model`` (a name or a
    `Model` or ``HookedTransformer``) is checked against the cache's model. ``shuffle`` permutes shard order per epoch
    and rows within each shard (seeded by ``seed``, epoch and shard). ``epochs=None`` repeats
    forever. Shard sizes are always checked against the manifest at open. SHA-256: ``verify=
    "on_read"`` (default) checks each shard the first time this reader loads it, hashing the bytes
    it parses anyway (one pass over memory, no second read of the file); ``verify=True`` checks
    every shard up front; ``verify=False`` never.
    """

    def __init__(self, cache_dir: str | os.PathLike, batch_tokens: int = 4096, *, shuffle: bool = False,
                 seed: int = 0, sites: "Iterable[Site | str] | None" = None, model: "ModelLike | str | None" = None,
                 epochs: int | None = 1, device: torch.device | str = "cpu", drop_last: bool = False,
                 verify: "bool | str" = "on_read") -> None:
        self.dir = Path(cache_dir)
        self.manifest = read_manifest(self.dir)
        cached = [Site.parse(s) for s in self.manifest["sites"]]
        if model is not None:
            name = model if isinstance(model, str) else Model.wrap(model).name
            if name != self.manifest.get("model"):
                raise CacheError(f"cache {self.dir} was built from model {self.manifest.get('model')!r}, not {name!r}")
        want = cached if sites is None else [Site.parse(s) for s in sites]
        missing = [s for s in want if s not in cached]
        if missing or not want:
            raise CacheError(f"sites {', '.join(map(str, missing)) or '(none)'} not in cache {self.dir}; "
                             f"cached sites: {', '.join(map(str, cached))}")
        if batch_tokens < 1 or (epochs is not None and epochs < 1):
            raise CacheError(f"batch_tokens must be >= 1 and epochs >= 1 or None, got {batch_tokens}, {epochs}")
        self.sites = tuple(want)
        self.d = {s: int(self.manifest["d"][str(s)]) for s in self.sites}
        self.dtype = _DTYPES[self.manifest["dtype"]]
        self.batch_tokens, self.shuffle, self.seed, self.epochs = batch_tokens, shuffle, int(seed), epochs
        self.device, self.drop_last = torch.device(device), drop_last
        self.shards = self.manifest["shards"]
        for s in self.shards:
            f = self.dir / s["file"]
            if not f.is_file():
                raise CacheError(f"cache {self.dir}: shard {s['file']} is missing")
            if f.stat().st_size != s["bytes"]:
                raise CacheError(f"cache {self.dir}: shard {s['file']} has {f.stat().st_size} bytes, "
                                 f"manifest says {s['bytes']} (truncated or rewritten)")
        if verify not in (True, False, "on_read"):
            raise CacheError(f"verify must be True, False or 'on_read', got {verify!r}")
        self._verify_on_read = verify == "on_read"
        self._verified: set[int] = set()
        if verify is True:
            self.verify()
        self._epoch = self._shard_pos = self._offset = 0
        self.batches_yielded = 0
        self._loaded: tuple[tuple[int, int], ActivationBatch] | None = None
        self.world = (0, 1)  # see `share_work`
        self._round: tuple[int, int, ActivationBatch | None] | None = None  # (epoch, first pos, my shard)

    def __len__(self) -> int:
        return int(self.manifest["total_rows"])

    def verify(self) -> None:
        """Check every shard's SHA-256 against the manifest."""
        for i, s in enumerate(self.shards):
            if _sha256(self.dir / s["file"]) != s["sha256"]:
                raise self._corrupt(i)
            self._verified.add(i)

    def _corrupt(self, index: int) -> CacheError:
        return CacheError(f"cache {self.dir}: shard {self.shards[index]['file']} is corrupt (SHA-256 differs "
                          "from the manifest); rebuild the cache with `mechscope cache ... --overwrite`")

    # -- shards -------------------------------------------------------------------------------
    def _order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.shards)))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.shards), generator=g).tolist()

    def read_shard(self, index: int) -> ActivationBatch:
        """All rows of shard ``index`` in stored order (selected sites only)."""
        from safetensors import safe_open
        from safetensors.torch import load as load_bytes

        info = self.shards[index]
        path = self.dir / info["file"]
        need = [f"acts.{s}" for s in self.sites] + list(_PROVENANCE)
        try:
            if self._verify_on_read and index not in self._verified:
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest() != info["sha256"]:
                    raise self._corrupt(index)
                self._verified.add(index)
                t = load_bytes(data)
            else:
                with safe_open(str(path), framework="pt") as f:
                    t = {k: f.get_tensor(k) for k in need if k in set(f.keys())}
            absent = [k for k in need if k not in t]
            if absent:
                raise CacheError(f"cache {self.dir}: shard {info['file']} lacks tensors {absent}")
        except CacheError:
            raise
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise CacheError(f"cache {self.dir}: shard {info['file']} is corrupt or unreadable: {e}") from None
        for s in self.sites:
            a = t[f"acts.{s}"]
            if a.shape != (info["rows"], self.d[s]) or a.dtype != self.dtype:
                raise CacheError(f"cache {self.dir}: shard {info['file']} site {s} is {a.dtype} {tuple(a.shape)}, "
                                 f"manifest says {self.dtype} ({info['rows']}, {self.d[s]})")
        return ActivationBatch({s: t[f"acts.{s}"] for s in self.sites}, *(t[k] for k in _PROVENANCE))

    def _shard_rows(self, epoch: int, pos: int) -> ActivationBatch:
        shard = self._order(epoch)[pos]
        if self._loaded is None or self._loaded[0] != (epoch, shard):
            rows = self._load(epoch, shard) if self.world[1] == 1 else self._shared_shard(epoch, pos)
            self._loaded = ((epoch, shard), rows)
        return self._loaded[1]

    def _load(self, epoch: int, shard: int) -> ActivationBatch:
        rows = self.read_shard(shard)
        if self.shuffle:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 100_003 + shard)
            rows = rows.index(torch.randperm(len(rows), generator=g))
        return rows.to(self.device)

    def share_work(self, world: "tuple[int, int]") -> None:
        """Data parallel over ``world = (rank, size)`` processes (`mechscope.world`): of every
        ``size`` consecutive shards (in this epoch's order) this rank reads one, rank ``j`` the
        ``j``-th, and the others receive it when the stream reaches it, so every rank yields the
        batches one process yields while reading 1/size of the files. Every rank must iterate in
        step; call before iterating."""
        rank, size = int(world[0]), int(world[1])
        if not 0 <= rank < size:
            raise ValueError(f"rank {rank} is not in a world of {size} process(es)")
        self.world, self._round = (rank, size), None

    def _shared_shard(self, epoch: int, pos: int) -> ActivationBatch:
        """Shard ``pos`` of ``epoch``: read by its owner in the current round of ``size`` shards
        (a new round starts at ``pos`` when it is outside the current one), broadcast to all."""
        from mechscope.world import broadcast_from

        (rank, size), order = self.world, self._order(epoch)
        if self._round is None or self._round[0] != epoch or not 0 <= pos - self._round[1] < size:
            mine = pos + rank
            self._round = (epoch, pos, self._load(epoch, order[mine]) if mine < len(order) else None)
        owner = pos - self._round[1]
        if owner == rank:
            rows = self._round[2]
        else:
            n = int(self.shards[order[pos]]["rows"])
            rows = ActivationBatch({s: torch.empty((n, self.d[s]), dtype=self.dtype, device=self.device)
                                    for s in self.sites},
                                   *(torch.empty(n, dtype=torch.int64, device=self.device) for _ in range(3)))
        broadcast_from(owner, [*(rows.acts[s] for s in self.sites), rows.token_ids, rows.seq_index, rows.positions])
        return rows

    def read_all(self) -> ActivationBatch:
        """Every row in stored order (small caches, tests)."""
        return ActivationBatch.concat(self.read_shard(i) for i in range(len(self.shards))).to(self.device)

    # -- iteration ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[ActivationBatch]:
        while True:
            parts, need = [], self.batch_tokens
            while need and (self.epochs is None or self._epoch < self.epochs):
                rows = self._shard_rows(self._epoch, self._shard_pos)
                take = rows.index(slice(self._offset, self._offset + need))
                parts.append(take)
                need -= len(take)
                self._offset += len(take)
                if self._offset >= len(rows):
                    self._shard_pos, self._offset = self._shard_pos + 1, 0
                    if self._shard_pos == len(self.shards):
                        self._epoch, self._shard_pos = self._epoch + 1, 0
            if not parts or (need and self.drop_last):
                return
            self.batches_yielded += 1
            yield ActivationBatch.concat(parts)

    def config(self) -> dict[str, Any]:
        # the shards' checksums identify the cache, so a moved folder still resumes
        shards = hashlib.sha256(json.dumps([s["sha256"] for s in self.shards]).encode()).hexdigest()
        return {"cache": shards, "total_rows": len(self), "sites": [str(s) for s in self.sites],
                "batch_tokens": self.batch_tokens, "shuffle": self.shuffle, "seed": self.seed,
                "epochs": self.epochs, "drop_last": self.drop_last}

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "cached_activations", "version": VERSION, "config": self.config(),
                "epoch": self._epoch, "shard_pos": self._shard_pos, "offset": self._offset,
                "batches_yielded": self.batches_yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_resume_state(state, "cached_activations", VERSION, self.config(), "cache reader", CacheError)
        self._epoch, self._shard_pos, self._offset = int(state["epoch"]), int(state["shard_pos"]), int(state["offset"])
        self.batches_yielded = int(state["batches_yielded"])
