"""GPU benchmark: the model alone against end-to-end ``predict``, and how much of a run the GPU idles.

    python -m benchmarks.gpu [--size 4096] [--batches 1 2 4 8 16 32 64] [--precisions fp32 bf16]
                             [--workdir /tmp/tilewise-bench]

Needs a CUDA device. Without one it prints one line saying so and exits with status 2, having measured
nothing (0 is a finished benchmark, 1 a failed one).

For each precision and batch size, with the default U-Net (256² tiles) over a generated RGB scene of
``--size``² (the scene and checkpoint of ``benchmarks.predict``), one line:

- ``alone``: tiles/s of the runner's forward passes (normalisation, model, probabilities) on a batch already on
  the GPU, back to back, as many tiles as the run runs: what the GPU does with nothing else to wait for;
- ``end_to_end``: tiles/s of ``predict`` writing a Zarr label map (tiles run / the run's seconds); the second of
  two runs, the first having loaded the model and warmed the GPU up;
- ``gpu_idle``: the share of that run's seconds in which the GPU ran no forward pass (CUDA events around each
  forward pass: ``ModelRunner.forward_gpu_seconds``);
- ``ratio``: end_to_end / alone.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.predict import _default_checkpoint, _scene

#: Exit status when there is no CUDA device to measure.
NO_CUDA = 2
BATCHES = (1, 2, 4, 8, 16, 32, 64)


def _model_alone(runner, batch: int, tiles: int) -> float:
    """Tiles/s of ``runner``'s forward passes on one batch of random pixels already on the GPU (a convolution's
    speed does not depend on the pixels), run ``ceil(tiles / batch)`` times after three untimed passes."""
    import torch

    card = runner.card
    x = torch.randint(0, 256, (batch, card.model.in_channels, card.tile_size, card.tile_size), dtype=torch.uint8)
    x = x.to(runner.device)
    passes = math.ceil(tiles / batch)
    for _ in range(3):
        runner.forward(x, None, card.normalization)
    torch.cuda.synchronize(runner.device)
    began = time.perf_counter()
    for _ in range(passes):
        runner.forward(x, None, card.normalization)
    torch.cuda.synchronize(runner.device)
    return passes * batch / (time.perf_counter() - began)


def measure(scene: Path, checkpoint: Path, precision: str, batch: int, workdir: Path) -> dict[str, float]:
    """One line of the table (see the module's docstring)."""
    import torch

    from pipeline import predict
    from pipeline.cache import model_cache
    from pipeline.options import PredictOptions
    from pipeline.prediction import prepare

    options = PredictOptions(device="cuda", precision=precision, batch_size=batch, overwrite=True)
    setup = prepare(scene, checkpoint, options)
    setup.reader.close()
    runner = model_cache().runner(setup.job.model)
    out = workdir / f"gpu_{precision}_{batch}.zarr"
    predict(scene, out, checkpoint, options)
    busy_before = runner.forward_gpu_seconds
    report = predict(scene, out, checkpoint, options)
    if model_cache().runner(setup.job.model) is not runner or runner.tiles_run == 0:
        raise RuntimeError("the run did not use the benchmark's runner: its model spec differs")
    busy = runner.forward_gpu_seconds - busy_before
    alone = _model_alone(runner, batch, report.tiles_run)
    model_cache().release()
    torch.cuda.empty_cache()
    end_to_end = report.tiles_run / report.seconds
    return {
        "alone": alone,
        "end_to_end": end_to_end,
        "ratio": end_to_end / alone,
        "gpu_idle": max(0.0, 1 - busy / report.seconds),
        "run_s": report.seconds,
        "tiles": report.tiles_run,
        "workers": report.workers,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tilewise-bench")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("benchmarks.gpu: needs a CUDA device, and torch sees none; nothing was measured")
        return NO_CUDA
    args.workdir.mkdir(parents=True, exist_ok=True)
    scene, checkpoint = _scene(args.workdir, args.size), _default_checkpoint(args.workdir)
    print(f"{torch.cuda.get_device_name()}, {args.size}² scene, default U-Net, tiles/s", flush=True)
    for precision in args.precisions:
        for batch in args.batches:
            row = measure(scene, checkpoint, precision, batch, args.workdir)
            print(
                f"{precision:5s} batch {batch:3d}  alone {row['alone']:8.1f}  end_to_end {row['end_to_end']:8.1f}  "
                f"ratio {row['ratio']:.3f}  gpu_idle {row['gpu_idle']:.3f}  run {row['run_s']:.2f} s  "
                f"tiles {row['tiles']}  workers {row['workers']}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
