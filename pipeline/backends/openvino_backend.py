"""OpenVINO on a CPU (``tilewise[openvino]``): the model converted to OpenVINO IR once (through ONNX), compiled
per batch size with static shapes, fp32 or bf16 (OpenVINO's own bf16 on AVX512-BF16/AMX CPUs).

The forward pool's threads each keep an infer request of their own; the compiled model has one stream per
forward thread, and each stream its share of the cores.
"""

from __future__ import annotations

import threading
from pathlib import Path

import openvino as ov
import torch

from . import conversion

#: OpenVINO's names of tilewise's precisions. fp32 must be asked for: on a bf16 CPU OpenVINO defaults to bf16.
_PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}


class OpenVinoBackend:
    name = "openvino"

    def __init__(
        self, model: torch.nn.Module, weights: str, bands: int, tile: int, precision: str, forward_threads: int
    ) -> None:
        parts = {**conversion.base_key(weights, bands, tile, precision), "engine": self.name}
        parts["engine_version"] = ov.get_version()
        folder = conversion.converted(parts, lambda out: _convert(model, bands, tile, out))
        self.path: Path = folder / "model.xml"
        self.bands, self.tile, self.precision = bands, tile, precision
        self._forward_threads = forward_threads
        self._core = ov.Core()
        self._model = self._core.read_model(str(self.path))
        self._lock = threading.Lock()
        self._compiled: dict[tuple[int, int, int], ov.CompiledModel] = {}
        self._local = threading.local()

    def _compiled_for(self, batch: int) -> ov.CompiledModel:
        threads = torch.get_num_threads()  # this process's share of cores per forward pass
        streams = self._forward_threads
        key = (batch, threads, streams)
        with self._lock:
            compiled = self._compiled.get(key)
            if compiled is None:
                model = self._model.clone()
                model.reshape([batch, self.bands, self.tile, self.tile])
                config = {
                    "INFERENCE_PRECISION_HINT": _PRECISION_HINTS[self.precision],
                    "NUM_STREAMS": streams,
                    "INFERENCE_NUM_THREADS": threads * streams,
                    "ENABLE_CPU_PINNING": False,  # a shared machine, and the pool's own threads
                }
                compiled = self._compiled[key] = self._core.compile_model(model, "CPU", config)
            return compiled

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        compiled = self._compiled_for(x.shape[0])
        requests: dict[int, ov.InferRequest] = self._local.__dict__.setdefault("requests", {})
        request = requests.get(id(compiled))
        if request is None:
            request = requests[id(compiled)] = compiled.create_infer_request()
        request.infer({0: ov.Tensor(x.detach().cpu().contiguous().numpy())})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())


def _convert(model: torch.nn.Module, bands: int, tile: int, out: Path) -> None:
    onnx_path = out / "model.onnx"
    conversion.export_onnx(model, bands, tile, onnx_path)
    ov.save_model(ov.convert_model(str(onnx_path)), str(out / "model.xml"), compress_to_fp16=False)
    onnx_path.unlink()
