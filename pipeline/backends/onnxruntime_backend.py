"""ONNX Runtime on a CPU (``tilewise[onnx]``): the model exported to ONNX once, then one session per thread
count, shared by the forward pool's threads (``InferenceSession.run`` may be called from several at once)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from . import conversion


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, model: torch.nn.Module, weights: str, bands: int, tile: int, precision: str) -> None:
        parts = {**conversion.base_key(weights, bands, tile, precision), "engine": self.name}
        parts["engine_version"] = ort.__version__
        folder = conversion.converted(parts, lambda out: conversion.export_onnx(model, bands, tile, out / "model.onnx"))
        self.path: Path = folder / "model.onnx"
        self._lock = threading.Lock()
        self._sessions: dict[int, ort.InferenceSession] = {}

    def _session(self) -> ort.InferenceSession:
        """The session for this process's share of cores per forward pass (what torch's threads are set to)."""
        threads = torch.get_num_threads()
        with self._lock:
            session = self._sessions.get(threads)
            if session is None:
                options = ort.SessionOptions()
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                options.log_severity_level = 3
                # Idle intra-op threads sleep, as tilewise's OpenMP threads do (pipeline/__init__.py).
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
                self._sessions[threads] = session
            return session

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        tiles = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        (probs,) = self._session().run(None, {"tiles": tiles})
        return torch.from_numpy(probs)
