"""The frozen backbone's features, computed once per input and reused on later passes.

A sample is keyed by what decides its features: the checkpoint (``namespace``, its sha256), the
levels kept, the device type and autocast precision that compute them, and the input exactly as
the backbone sees it (after resizing, cropping, normalisation and padding): its shape, dtype and
contents. The contents go into a 128-bit fingerprint computed where the input is, so that on a
GPU a lookup copies two integers per sample to the host, not the sample (hashing on the host
with sha256 meant copying every input there first, which cost more than Swin-B's forward on an
H100): two sums, modulo 2**64, of the input's bit patterns times fixed odd pseudo-random 64-bit
weights. Integer arithmetic is exact, so the sums do not depend on the order of the reduction or
on the device; inputs that differ in one value never collide (odd weights), and two arbitrary
inputs collide with a probability of about 2**-126.

Another transform gives another input and so another key: a hit is always the right features.
Under continuous augmentation (random resizing) there are simply no hits, and the cache is left
off there (the workflow uses it for evaluations of frozen backbones only).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Callable, Sequence

import torch

from frozenrep.io import atomic_path
from frozenrep.progress import log

FORMAT = "frozenrep-feature-cache-v2"  # part of every key: files of another layout are never read
_ALIGN = 64                             # every level starts at a multiple of this in a cache file
_BLOCK = 1 << 20                        # fingerprint weights come in blocks of this many
_SEED = 0x5EEDF00D

# Same-width integer dtypes whose bit patterns the fingerprint sums (a float's bits, not its value:
# -0.0 and 0.0 are different inputs to a backbone only in their bits, which is the safe side).
_BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
         torch.bfloat16: torch.int16, torch.bool: torch.uint8}
_INTEGERS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


class FingerprintWeights:
    """Two rows of odd pseudo-random int64 weights; the first ``n`` are the same whatever ``n`` is."""

    def __init__(self) -> None:
        self.host = torch.empty(2, 0, dtype=torch.int64)
        self.on_device: dict[torch.device, torch.Tensor] = {}

    def get(self, n: int, device: torch.device) -> torch.Tensor:
        if self.host.shape[1] < n:
            blocks = [self.host]
            for k in range(self.host.shape[1] // _BLOCK, -(-n // _BLOCK)):
                gen = torch.Generator().manual_seed(_SEED + k)
                blocks.append(torch.empty(2, _BLOCK, dtype=torch.int64).random_(generator=gen) | 1)
            self.host = torch.cat(blocks, 1)
            self.on_device.clear()
        if device.type == "cpu":
            return self.host[:, :n]
        if device not in self.on_device:
            self.on_device[device] = self.host.to(device)
        return self.on_device[device][:, :n]


_WEIGHTS = FingerprintWeights()


def fingerprints(batch: torch.Tensor, chunk_elements: int = 1 << 22) -> list[tuple[int, int]]:
    """Per sample of ``batch`` (first dimension), two 64-bit sums that identify its bits.

    Computed on ``batch``'s device; only the ``2 * len(batch)`` results are copied to the host.
    Works on chunks of about ``chunk_elements`` values, so the int64 temporaries stay small.
    """
    if batch.dtype not in _BITS and batch.dtype not in _INTEGERS:
        raise TypeError(f"a feature cache cannot key inputs of dtype {batch.dtype}")
    flat = batch.detach().reshape(batch.shape[0], -1)  # logical order: memory format does not matter
    bits = flat.view(_BITS[flat.dtype]) if flat.dtype in _BITS else flat
    n = flat.shape[1]
    weights = _WEIGHTS.get(n, flat.device)
    sums = torch.empty(flat.shape[0], 2, dtype=torch.int64, device=flat.device)
    step = max(1, chunk_elements // max(n, 1))
    for start in range(0, flat.shape[0], step):
        chunk = bits[start:start + step].to(torch.int64)
        for row in range(2):
            sums[start:start + step, row] = (chunk * weights[row]).sum(1)  # wraps modulo 2**64
    return [tuple(pair) for pair in sums.cpu().tolist()]


class FeatureCache:
    """Features of a frozen backbone per input sample, on disk or in memory.

    ``levels`` names the backbone levels kept (None: all); a head that reads one level (the video
    head) stores and loads only that one, and the levels are part of the key. The backbone adapter
    (:meth:`frozenrep.backbones.BackboneAdapter.use_cache`) passes only those levels in.

    On disk (``root`` given) each key is one file: an 8-byte header length, a JSON header of each
    level's dtype, shape and offset (counted from the first 64-byte boundary after the header),
    then the raw levels, each at a 64-byte boundary. It is written
    to a temporary file and renamed into place (parallel jobs may share the cache; the last
    identical write wins). A batch's hits are read straight from the files into one host buffer
    per level, pinned when the batch is on a GPU, which then goes over in one asynchronous copy
    (a memory map would fault in every 4 KiB page of a 30 MB entry, then copy it once more). An
    unreadable or short file is a miss: its features are computed and the file rewritten.
    Features are stored in their own precision, float32 on the CPU and bf16 under CUDA autocast, so
    a cached pass gives the same head outputs, bit for bit, as an uncached one. Without ``root``
    the features stay in memory, on the device that computed them, for the life of the object.
    A backbone's samples must not influence each other (true in eval mode: no batch statistics).
    """

    def __init__(self, namespace: str, root: str | Path | None = None, levels: Sequence[str] | None = None) -> None:
        if not namespace:
            raise ValueError("a feature cache needs a namespace (the checkpoint's sha256)")
        self.namespace = namespace
        self.levels: tuple[str, ...] | None = tuple(levels) if levels is not None else None
        if self.levels is not None and not self.levels:
            raise ValueError("a feature cache needs at least one level to keep (levels=None keeps all)")
        self.root = Path(root) / namespace[:16] if root is not None else None
        self.memory: dict[str, list[torch.Tensor]] = {}
        self.hits = self.misses = 0
        self.full = False  # set when a write failed (a full disk): later entries are not written

    def keys(self, batch: torch.Tensor) -> list[str]:
        """One key per sample of ``batch``, its fingerprint computed on ``batch``'s device."""
        device = batch.device.type
        amp = _name(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else "off"
        prefix = (f"{FORMAT}|{self.namespace}|{','.join(self.levels or ['*'])}|{device}|{amp}|"
                  f"{tuple(batch.shape[1:])}|{_name(batch.dtype)}")
        return [hashlib.sha256(f"{prefix}|{a}|{b}".encode()).hexdigest() for a, b in fingerprints(batch)]

    def key(self, sample: torch.Tensor) -> str:
        """The key of one sample (no batch dimension)."""
        return self.keys(sample[None])[0]

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.feat"

    def _header(self, key: str) -> list[tuple[torch.dtype, tuple[int, ...], int]] | None:
        """The key's file's levels as (dtype, shape, byte offset); None if it is not cached, or if
        the file cannot be what it claims (then its features are computed again and it is rewritten)."""
        path = self._path(key)
        try:
            with open(path, "rb") as handle:
                size = int.from_bytes(handle.read(8), "little")
                start = _aligned(8 + size)
                entries = [(getattr(torch, d), tuple(s), start + int(o)) for d, s, o in json.loads(handle.read(size))]
                length = os.fstat(handle.fileno()).st_size
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, AttributeError) as err:
            log.warning("feature cache: %s is unreadable (%s); its features are computed again", path, err)
            return None
        if any(not isinstance(d, torch.dtype) or o + _nbytes(d, s) > length for d, s, o in entries):
            log.warning("feature cache: %s is shorter than its header says; its features are computed again", path)
            return None
        return entries

    def _read(self, key: str, entries: list[tuple[torch.dtype, tuple[int, ...], int]],
              into: list[torch.Tensor]) -> None:
        """Read the key's levels straight into ``into`` (host tensors of the entries' dtypes and shapes)."""
        path = self._path(key)
        with open(path, "rb", buffering=0) as handle:
            for (dtype, shape, offset), out in zip(entries, into):
                if (out.dtype, tuple(out.shape)) != (dtype, shape):
                    raise RuntimeError(f"feature cache: {path} holds a {_name(dtype)} level of shape {shape} "
                                       f"where {_name(out.dtype)} {tuple(out.shape)} was expected; delete {self.root}")
                handle.seek(offset)
                view, done = _bytes_of(out), 0
                while done < len(view):
                    read = handle.readinto(view[done:])
                    if not read:
                        raise RuntimeError(f"feature cache: {path} ended early; delete it and run again")
                    done += read

    def load(self, key: str) -> list[torch.Tensor] | None:
        """One sample's cached levels, or None."""
        if self.root is None:
            return self.memory.get(key)
        entries = self._header(key)
        if entries is None:
            return None
        levels = [torch.empty(shape, dtype=dtype) for dtype, shape, _ in entries]
        self._read(key, entries, levels)
        return levels

    def _store(self, key: str, feats: list[torch.Tensor]) -> None:
        if self.full:
            return
        try:
            self._write(key, feats)
        except OSError as err:  # a full disk: the evaluation goes on uncached (results do not depend on it)
            self.full = True
            log.warning("feature cache: %s; no more entries are written in this job", err)

    def _write(self, key: str, feats: list[torch.Tensor]) -> None:
        if self.root is None:
            self.memory[key] = [f.detach().clone() for f in feats]  # own storage: the head may reuse its input
            return
        feats = [f.detach().cpu().contiguous() for f in feats]
        header, offset = [], 0
        for f in feats:
            header.append([_name(f.dtype), list(f.shape), offset])
            offset += _aligned(_nbytes(f.dtype, f.shape))
        head = json.dumps(header).encode()
        start = _aligned(8 + len(head))  # the offsets count from here
        with atomic_path(self._path(key)) as tmp:
            with open(tmp, "wb") as out:
                out.write(len(head).to_bytes(8, "little") + head)
                for f, (_, _, at) in zip(feats, header):
                    out.seek(start + at)
                    out.write(_bytes_of(f))

    def _cached(self, keys: list[str], found: dict[int, object], device: torch.device) -> list[torch.Tensor]:
        """The hits' levels, batched in key order, on ``device``. From disk each file is read straight
        into one host buffer per level (pinned for a GPU), which then goes over in one copy."""
        hits = sorted(found)
        if self.root is None:
            return [torch.stack([found[i][level] for i in hits]) for level in range(len(found[hits[0]]))]
        pin = device.type == "cuda"
        batch = [torch.empty((len(hits), *shape), dtype=dtype, pin_memory=pin) for dtype, shape, _ in found[hits[0]]]
        for row, i in enumerate(hits):
            self._read(keys[i], found[i], [level[row] for level in batch])
        return [level.to(device, non_blocking=pin) for level in batch]

    def features(self, images: torch.Tensor,
                 compute: Callable[[torch.Tensor], list[torch.Tensor]]) -> list[torch.Tensor]:
        """The batch's features per kept level: cached samples loaded, the others computed together.

        ``compute`` maps a batch of inputs to its kept levels, in the order of ``levels``.
        """
        keys = self.keys(images)
        lookup = self.memory.get if self.root is None else self._header
        found = {i: entry for i, entry in enumerate(map(lookup, keys)) if entry is not None}
        missing = [i for i in range(len(keys)) if i not in found]
        self.hits += len(found)
        self.misses += len(missing)
        computed = None
        if missing:
            computed = compute(images[missing] if found else images)
            # One device-to-host copy per level for the disk, not one per sample.
            kept = computed if self.root is None else [level.detach().cpu() for level in computed]
            for j, i in enumerate(missing):
                self._store(keys[i], [level[j] for level in kept])
            if not found:
                return computed
        cached = self._cached(keys, found, images.device)
        if computed is None:
            return cached
        merged = []
        for old, new in zip(cached, computed):
            level = torch.empty((len(keys), *old.shape[1:]), dtype=old.dtype, device=images.device)
            level[sorted(found)] = old
            level[missing] = new
            merged.append(level)
        return merged


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _nbytes(dtype: torch.dtype, shape: Sequence[int]) -> int:
    return math.prod(shape) * dtype.itemsize


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    """A contiguous host tensor's bytes, writable (bf16 and other dtypes NumPy lacks included)."""
    return memoryview(tensor.view(torch.uint8).numpy()).cast("B")


def _aligned(size: int) -> int:
    return -(-size // _ALIGN) * _ALIGN
