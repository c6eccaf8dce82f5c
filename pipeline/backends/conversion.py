"""Converted models on disk: built once, found again by a key of everything they depend on, checked on load.

An entry is a folder ``<cache>/models/<key>/`` holding the converted files and ``manifest.json`` with their
SHA-256s. The key is a hash of the weights' checksum, the input shape, the precision, the engine and its
version, and the exporter's version. An entry is written under a temporary name and renamed into place, so a
reader never sees half of one, and two processes (Dask workers) converting at once both end with a whole entry.
An entry whose files do not match their manifest (truncated, edited, a disk error) is discarded and rebuilt,
never loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..model import logits_to_probs

log = logging.getLogger(__name__)

#: Where converted models are kept: this variable, else $XDG_CACHE_HOME/tilewise, else ~/.cache/tilewise.
CACHE_ENV = "TILEWISE_CACHE_DIR"
MANIFEST = "manifest.json"
#: Bump when the exported graph changes for the same weights (the head, the opset).
EXPORT_VERSION = 1
OPSET = 17

_lock = threading.Lock()
#: Conversions this process ran (a test checks that a second run converts nothing).
conversions = 0


def cache_root() -> Path:
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tilewise"


def entry_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def converted(parts: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """The folder of the converted model that ``parts`` identify: found on disk and verified, or built by
    ``build(folder)`` (which writes the files into ``folder``) and stored."""
    global conversions
    entry = cache_root() / "models" / entry_key(parts)
    with _lock:  # one conversion per process, whichever thread asks first
        if _verified(entry):
            return entry
        if entry.exists():
            log.warning("discarding the damaged converted model %s; converting again", entry)
            _discard(entry)
        entry.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
        try:
            build(building)
            files = {p.name: _sha256(p) for p in sorted(building.iterdir())}
            (building / MANIFEST).write_text(json.dumps({"key": parts, "files": files}, indent=1))
            conversions += 1
            try:
                os.rename(building, entry)
            except OSError:  # another process stored it first: keep theirs if it is whole
                if not _verified(entry):
                    raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
        return entry


def _verified(entry: Path) -> bool:
    try:
        files = json.loads((entry / MANIFEST).read_text())["files"]
        present = {p.name for p in entry.iterdir()} - {MANIFEST}
        return bool(files) and present == set(files) and all(_sha256(entry / n) == d for n, d in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _discard(entry: Path) -> None:
    aside = entry.with_name(f".{entry.name}-discarded-{os.getpid()}")
    try:
        os.rename(entry, aside)
    except OSError:
        return  # already gone
    shutil.rmtree(aside, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class _WithProbabilities(torch.nn.Module):
    """The model and its softmax/sigmoid, so the converted graph returns probabilities."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_to_probs(self.model(x))


def export_onnx(model: torch.nn.Module, bands: int, tile: int, path: Path) -> None:
    """Write ``model`` (float32, CPU) and its probabilities head as ONNX for (any batch, bands, tile, tile).

    torch's TorchScript exporter: it needs only ``onnx`` and is several times quicker than the dynamo one."""
    example = torch.zeros(1, bands, tile, tile)
    module = _WithProbabilities(model).float().cpu().eval()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["tiles"],
            output_names=["probabilities"],
            dynamic_axes={"tiles": {0: "batch"}, "probabilities": {0: "batch"}},
        )


def base_key(weights: str, bands: int, tile: int, precision: str) -> dict[str, Any]:
    """The parts of a key every engine shares."""
    return {
        "weights_sha256": weights,
        "input": [bands, tile, tile],
        "precision": precision,
        "torch": torch.__version__,
        "export": EXPORT_VERSION,
        "opset": OPSET,
    }
