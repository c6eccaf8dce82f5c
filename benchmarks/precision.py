"""bf16 against fp32 on trained models: how many labels change, per engine.

    python -m benchmarks.precision [--workdir /tmp/tilewise-precision]

Models: the demo model (sample_data/demo_model.safetensors, buildings on generated scenes) on a 2048² scene of
the seed training never saw, and the nuclei model (sample_data/nuclei_model.safetensors, MoNuSeg H&E) on the 8
MoNuSeg images in ../shared/data (skipped where absent). Each image runs through ``predict`` with torch fp32 (the
reference), torch bf16 (autocast), OpenVINO fp32 and OpenVINO bf16 (where installed); the figures are the share of
pixels whose label equals torch fp32's, and the largest difference of a probability. Agreement only: timing is
``benchmarks.backends``'s job.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MONUSEG = ROOT.parent / "shared" / "data" / "monuseg" / "images"
#: MoNuSeg's images are PNGs (no pixel size): 40x scans at 0.25 µm/px.
MONUSEG_MPP = 0.25
ENGINES = (("torch", "fp32"), ("torch", "bf16"), ("openvino", "fp32"), ("openvino", "bf16"))


def _outputs(
    image: Path, model: Path, out: Path, backend: str, precision: str, input_mpp: float | None
) -> tuple[np.ndarray, np.ndarray]:
    import zarr

    from pipeline import predict

    settings = {"backend": backend, "precision": precision, "input_mpp": input_mpp}
    predict(image, out, model, output_kind="both", overwrite=True, **settings)
    group = zarr.open_group(str(out), mode="r")
    return group["labels"][:], group["probs"][:]


def _inputs(workdir: Path) -> list[tuple[str, Path, Path, float | None]]:
    from sample_data.generate import write_scene

    scene = workdir / "demo_scene_seed0_2048.tif"
    if not scene.exists():
        write_scene(scene, None, 2048, 2048, seed=0)
    inputs = [("demo (buildings)", ROOT / "sample_data" / "demo_model.safetensors", scene, None)]
    nuclei = ROOT / "sample_data" / "nuclei_model.safetensors"
    inputs += [("nuclei (MoNuSeg)", nuclei, path, MONUSEG_MPP) for path in sorted(MONUSEG.glob("*.png"))]
    return inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tilewise-precision")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    from pipeline.backends import installed

    engines = [(b, p) for b, p in ENGINES if installed(b)]
    totals: dict[tuple[str, str, str], list[float]] = {}  # (model, backend, precision) → [same, pixels, max dp]
    for name, model, image, input_mpp in _inputs(args.workdir):
        reference = None
        for backend, precision in engines:
            out = args.workdir / f"{backend}_{precision}.zarr"
            labels, probs = _outputs(image, model, out, backend, precision, input_mpp)
            if reference is None:
                reference = labels, probs
            same = float((labels == reference[0]).sum())
            delta = float(np.abs(probs.astype(np.float32) - reference[1].astype(np.float32)).max())
            total = totals.setdefault((name, backend, precision), [0.0, 0.0, 0.0])
            total[0] += same
            total[1] += labels.size
            total[2] = max(total[2], delta)
            print(
                f"{image.name}: {backend} {precision}: labels = torch fp32 {100 * same / labels.size:.4f} %, "
                f"max |Δp| {delta:.2e}",
                flush=True,
            )
    print("\n| model | engine | precision | pixels | labels = torch fp32 | max abs Δp |")
    print("|---|---|---|---|---|---|")
    for (name, backend, precision), (same, pixels, delta) in totals.items():
        print(
            f"| {name} | {backend} | {precision} | {pixels / 1e6:.1f} M | {100 * same / pixels:.4f} % | {delta:.1e} |"
        )


if __name__ == "__main__":
    main()
