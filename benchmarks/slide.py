"""Whole-slide benchmark: a generated 40 000 × 40 000 slide with about 15 % tissue, and time ∝ tissue area.

    python -m benchmarks.slide [--size 40000] [--crop 10000] [--workdir /tmp/tilewise-bench]

Generates (once, tile by tile) a pyramidal OME-TIFF slide of ``size``² with ~15 % tissue and a ``crop``² one
that is all tissue, then runs the default U-Net over each with the tissue mask, in a child process each so that
peak RSS is per run, and prints wall time, peak RSS, tiles run/skipped and the time per tissue megapixel.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.predict import _default_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def child(slide: Path, workdir: Path) -> dict[str, float]:
    from pipeline import predict

    out = workdir / f"{slide.name.split('.')[0]}_labels.ome.tif"
    report = predict(slide, out, _default_checkpoint(workdir), mask="tissue", overwrite=True)
    return {
        "seconds": report.seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tiles_run": report.tiles_run,
        "tiles_total": report.tiles_total,
        "skipped_fraction": report.skipped_fraction,
        "tissue_fraction": report.valid_fraction,
        "chunks_unread": report.chunks_unread,
        "chunks": report.chunks,
        "chunk": report.chunk,
        "batch": report.batch_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=40_000)
    parser.add_argument("--crop", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tilewise-bench")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(child(args.child, args.workdir)))
        return

    from sample_data.slide import write_slide

    runs = {}
    for name, side, tissue in (("sparse", args.size, 0.15), ("full", args.crop, 1.0)):
        slide = args.workdir / f"slide_{side}_{int(tissue * 100)}.ome.tif"
        if not slide.exists():
            print(f"generating {slide.name} …", flush=True)
            write_slide(slide.with_suffix(".partial"), side, tissue)
            slide.with_suffix(".partial").rename(slide)
        cmd = [sys.executable, "-m", "benchmarks.slide", "--child", str(slide), "--workdir", str(args.workdir)]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        figures["tissue_mpx"] = figures["tissue_fraction"] * side * side / 1e6
        figures["s_per_tissue_mpx"] = figures["seconds"] / figures["tissue_mpx"]
        runs[name] = figures
        print(
            f"{side}² slide, {figures['tissue_fraction']:.1%} tissue: {figures['seconds']:.1f} s, peak RSS "
            f"{figures['peak_rss_mib']:.0f} MiB, tiles run {figures['tiles_run']} of {figures['tiles_total']} "
            f"({figures['skipped_fraction']:.1%} skipped), chunks not read {figures['chunks_unread']} of "
            f"{figures['chunks']}, {figures['s_per_tissue_mpx']:.3f} s per tissue megapixel (chunk "
            f"{figures['chunk']} px, batch {figures['batch']})",
            flush=True,
        )
    ratio = runs["sparse"]["s_per_tissue_mpx"] / runs["full"]["s_per_tissue_mpx"]
    print(
        f"\ntime per tissue megapixel, {args.size}² at ~15 % / {args.crop}² at 100 %: {ratio:.2f} "
        "(1.00 = time proportional to tissue area)"
    )


if __name__ == "__main__":
    main()
