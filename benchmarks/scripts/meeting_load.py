"""Load test of `edgekit serve` on loopback: N simulated participants sending real JPEG tiles at F FPS for S
seconds (bounded, self-stopping), then: did any client drop, frame-to-grid latency p50/p99 (the server's
own measurement: tile arrival -> the grid that shows it is sent), RSS over time and its trend.

The clients speak the real protocol from one asyncio process (a tile per client per 1/F s, grids read
and counted), so the server is the only thing measured; the tiles are 240x180 JPEGs of Megamind.avi.

Usage: python benchmarks/scripts/meeting_load.py [--clients 32] [--fps 10] [--seconds 60]
Writes benchmarks/results/meeting_load.{json,txt}.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from edgekit.edge_apps import protocol as p
from edgekit.core.hardware import current_rss_mb

MEGAMIND = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiles(count: int = 48) -> list[bytes]:
    import cv2

    video = cv2.VideoCapture(str(MEGAMIND))
    out = []
    while len(out) < count:
        ok, image = video.read()
        if not ok:
            break
        out.append(cv2.imencode(".jpg", cv2.resize(image, (240, 180)), [cv2.IMWRITE_JPEG_QUALITY, 70])[1].tobytes())
    if not out:
        sys.exit(f"error: {MEGAMIND} missing; run `bash tools/system-packages.sh`")
    return out


async def participant(i: int, port: int, token: str, frames: list[bytes], fps: float, seconds: float,
                      stats: dict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(p.encode_json(p.HELLO, {"token": token, "name": f"sim{i:02d}"}))
    kind, _ = await p.read_message(reader)
    assert kind == p.WELCOME, p.NAMES[kind]
    grids = 0

    async def receive():
        nonlocal grids
        while True:
            kind, _ = await p.read_message(reader)
            grids += 1 if kind == p.GRID else 0

    receiver = asyncio.create_task(receive())
    start = time.monotonic()
    sent = 0
    try:
        while time.monotonic() - start < seconds:
            if receiver.done():  # the server closed us: a dropped client
                stats["dropped"].append(i)
                return
            writer.write(p.encode_tile({"label": "attentive" if i % 2 else "not attentive", "score": 0.5,
                                        "seq": sent}, frames[(sent + i) % len(frames)]))
            await writer.drain()
            sent += 1
            await asyncio.sleep(max(0.0, start + sent / fps - time.monotonic()))
        writer.write(p.encode(p.BYE))
        await writer.drain()
    finally:
        receiver.cancel()
        writer.close()
        stats["sent"][i], stats["grids"][i] = sent, grids


async def main_async(args) -> dict:
    port, http = free_port(), free_port()
    token = "load-test"
    server = subprocess.Popen([sys.executable, "-m", "edgekit", "serve", "--port", str(port), "--http",
                               f"127.0.0.1:{http}", "--token", token, "--viewer-token", token, "--duration", str(args.seconds + 30),
                               "--max-clients", str(args.clients + 8)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while "meeting on" not in server.stderr.readline():
            pass
        frames = tiles()
        stats = {"dropped": [], "sent": {}, "grids": {}}
        rss, counts = [], []

        async def sample():
            start = time.monotonic()
            while True:
                await asyncio.sleep(5)
                status = json.loads(urllib.request.urlopen(urllib.request.Request(
                    f"http://127.0.0.1:{http}/status.json", headers={"Authorization": f"Bearer {token}"}), timeout=5).read())
                rss.append((round(time.monotonic() - start, 1), current_rss_mb(server.pid)))
                counts.append(status["count"])

        sampler = asyncio.create_task(sample())
        await asyncio.gather(*(participant(i, port, token, frames, args.fps, args.seconds, stats)
                               for i in range(args.clients)))
        sampler.cancel()
        status = json.loads(urllib.request.urlopen(urllib.request.Request(
                    f"http://127.0.0.1:{http}/status.json", headers={"Authorization": f"Bearer {token}"}), timeout=5).read())
    finally:
        server.terminate()
        server.wait(timeout=30)
    t, r = np.array([x for x, _ in rss]), np.array([y for _, y in rss])
    half = len(r) // 2
    return {"clients": args.clients, "fps": args.fps, "seconds": args.seconds, "dropped": stats["dropped"],
            "min_participants_seen": min(counts) if counts else None, "tiles_sent": sum(stats["sent"].values()),
            "grids_received_min": min(stats["grids"].values()), "latency_ms": status["latency_ms"],
            "rss_mb": rss, "rss_slope_mb_per_min": float(np.polyfit(t, r, 1)[0] * 60) if len(t) > 2 else None,
            "rss_first_half_mean": float(r[:half].mean()), "rss_second_half_mean": float(r[half:].mean()),
            "machine": f"{platform.machine()}, {platform.processor() or ''} {len(__import__('os').sched_getaffinity(0))} cores"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", default="benchmarks/results/meeting_load")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    lat = result["latency_ms"]
    slope = "n/a (fewer than 3 samples)" if result["rss_slope_mb_per_min"] is None else \
        f"{result['rss_slope_mb_per_min']:+.2f} MB/min"
    text = (f"$ python benchmarks/scripts/meeting_load.py --clients {args.clients} --fps {args.fps:g} --seconds {args.seconds:g}\n"
            f"{result['clients']} simulated clients x {result['fps']:g} FPS x {result['seconds']:g} s on loopback "
            f"({result['machine']})\n"
            f"dropped clients: {len(result['dropped'])}; fewest participants seen by the server: "
            f"{result['min_participants_seen']}\n"
            f"tiles sent: {result['tiles_sent']}; grids received per client: >= {result['grids_received_min']}\n"
            f"frame-to-grid latency: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms over {lat['count']} tiles\n"
            f"server RSS (MB, every 5 s): {' '.join(f'{r:.0f}' for _, r in result['rss_mb'])}\n"
            f"RSS trend: {slope}; mean first half "
            f"{result['rss_first_half_mean']:.1f} MB, second half {result['rss_second_half_mean']:.1f} MB\n")
    print(text, end="")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".txt").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
