"""Object storage against local files: the same runs reading an 8192² COG and an OME-TIFF slide from an S3 server
on loopback (in its own process) and from local disk.

    python -m benchmarks.storage [--size 8192] [--slide 8192] [--sparse 16384] [--pairs 2] [--workdir DIR]
                                 [--server static|moto]

The server is ``benchmarks.static_s3`` (ranged reads straight from the files, as object stores answer them) or
moto (the tests' server, whose cost per ranged request grows with the object's size).

Every run is a child process (GDAL's and fsspec's caches start empty), with a 1×1-conv model so that reading is
a large share of the run. Figures: wall time of the run (``PredictReport.seconds``), best of ``--pairs``
alternating local/remote runs straight to the server; the bytes fetched by one more remote run through a
counting proxy (HTTP bodies and headers) against the bytes of the full-resolution tiles; and for a masked slide
(~15 % tissue) the bytes fetched against its tissue share (chunks without tissue are not fetched). Beside them,
the time the server takes to send the whole file in one GET (best of ``--pairs``): what the loopback server
alone costs per byte, a floor under any remote run that fetches the file's bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "bench"


class CountingProxy:
    """A TCP forwarder on loopback that counts the bytes the server sends back."""

    def __init__(self, upstream: int) -> None:
        self.upstream, self.received, self._lock = upstream, 0, threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.received = 0

    def _accept(self) -> None:
        while True:
            client, _ = self._listener.accept()
            server = socket.create_connection(("127.0.0.1", self.upstream))
            for s in (client, server):  # without it Nagle's algorithm meets delayed ACKs: 40 ms per request
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                if count:
                    with self._lock:
                        self.received += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def _start_server(kind: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """moto, or ``benchmarks.static_s3`` serving ``workdir`` as the bucket, on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if kind == "moto":
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    else:
        cmd = [sys.executable, "-m", "benchmarks.static_s3", str(workdir), BUCKET, str(port)]
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the {kind} server did not start")


def _cog(workdir: Path, size: int) -> Path:
    import rasterio.shutil

    from benchmarks.predict import _scene

    path = workdir / f"scene_{size}.cog.tif"
    if not path.exists():
        rasterio.shutil.copy(_scene(workdir, size), path, driver="COG", compress="deflate", blocksize=512)
    return path


def _slide(workdir: Path, side: int, tissue: float) -> Path:
    from sample_data.slide import write_slide

    path = workdir / f"slide_{side}_{int(tissue * 100)}.ome.tif"
    if not path.exists():
        write_slide(path.with_suffix(".partial"), side, tissue)
        path.with_suffix(".partial").rename(path)
    return path


def _level0_bytes(path: Path) -> int:
    """Bytes of the full-resolution tiles (what a run over the whole raster must fetch)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return int(sum(tif.series[0].levels[0].keyframe.databytecounts))


def child(source: str, workdir: Path, mask: str | None) -> dict[str, float]:
    from benchmarks.predict import _pointwise_checkpoint
    from pipeline import predict

    out = workdir / ("storage_out.ome.tif" if ".ome." in source else "storage_out.tif")
    report = predict(source, out, _pointwise_checkpoint(), overwrite=True, mask=mask, chunk=2048)
    return {
        "seconds": report.seconds,
        "valid": report.valid_fraction or 1.0,
        "unread": report.chunks_unread,
        "chunks": report.chunks,
    }


def _one_get(s3: object, key: str) -> float:
    """Seconds to fetch the whole object ``key`` in one GET and drop it."""
    began = time.perf_counter()
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"]  # type: ignore[attr-defined]
    while body.read(1 << 20):
        pass
    return time.perf_counter() - began


def _run(source: str, workdir: Path, mask: str | None, env: dict[str, str]) -> dict[str, float]:
    cmd = [sys.executable, "-m", "benchmarks.storage", "--child", source, "--workdir", str(workdir)]
    cmd += ["--mask", mask] if mask else []
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--slide", type=int, default=8192)
    parser.add_argument("--sparse", type=int, default=16384)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tilewise-bench")
    parser.add_argument("--cases", default="cog,slide,masked", help="which of cog, slide, masked to run")
    parser.add_argument(
        "--server",
        choices=("static", "moto"),
        default="static",
        help="the loopback S3 server: benchmarks.static_s3 (ranged reads from the files) or moto (the tests')",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mask", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(child(args.child, args.workdir, args.mask)))
        return

    import boto3

    chosen = args.cases.split(",")
    cases = [
        *([("COG", _cog(args.workdir, args.size), None)] if "cog" in chosen else []),
        *([("OME-TIFF slide", _slide(args.workdir, args.slide, 1.0), None)] if "slide" in chosen else []),
        *([("masked slide", _slide(args.workdir, args.sparse, 0.15), "tissue")] if "masked" in chosen else []),
    ]
    server, port = _start_server(args.server, args.workdir)
    proxy = CountingProxy(port)
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "us-east-1",
    }
    # Timed runs go straight to the server; the proxy (Python threads, which slowed s3fs's requests several-fold)
    # only counts the bytes of one more run.
    direct = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        if args.server == "moto":
            s3.create_bucket(Bucket=BUCKET)
        print(
            f"{'case':<16} {'local s':>8} {'S3 s':>8} {'S3/local':>9} {'fetched MiB':>12} {'tiles MiB':>10} "
            f"{'fetched/tiles':>14} {'valid':>6} {'chunks read':>12} {'one GET s':>10}"
        )
        for name, path, mask in cases:
            if args.server == "moto":
                s3.upload_file(str(path), BUCKET, path.name)
            local, remote, fetched, gets = [], [], [], []
            url = f"s3://{BUCKET}/{path.name}"
            for _ in range(args.pairs):
                local.append(_run(str(path), args.workdir, mask, env))
                remote.append(_run(url, args.workdir, mask, direct))
                gets.append(_one_get(s3, path.name))
            proxy.reset()
            counted = _run(url, args.workdir, mask, env)
            fetched.append(proxy.received)
            tiles = _level0_bytes(path)
            best_local = min(r["seconds"] for r in local)
            best_remote = min(r["seconds"] for r in remote)
            print(
                f"{name:<16} {best_local:>8.2f} {best_remote:>8.2f} {best_remote / best_local:>9.2f} "
                f"{min(fetched) / 2**20:>12.1f} {tiles / 2**20:>10.1f} {min(fetched) / tiles:>14.3f} "
                f"{counted['valid']:>6.1%} {counted['chunks'] - counted['unread']:>5} of {counted['chunks']:<4} "
                f"{min(gets):>10.2f}",
                flush=True,
            )
            if args.server == "moto":
                s3.delete_object(Bucket=BUCKET, Key=path.name)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
