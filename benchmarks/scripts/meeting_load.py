"""Load test of `edgekit serve` on loopback: N simulated participants sending real JPEG tiles at F FPS for S
seconds (bounded, self-stopping), then: did any client drop, grids per second each participant received,
the round trip measured from the client side, tiles never shown, RSS over time and its trend.

The clients speak the real protocol from one asyncio process (a tile per client per 1/F s, grids read
and counted); the tiles are 240x180 JPEGs of Megamind.avi with the tile's sequence number stamped on them as
8 black/white bars (bits of seq mod 256) across their upper part. Eight "observer" clients decode every grid
they receive, read the bars in their own cell (cells are laid out in join order, as the server does) and so
know which of their tiles it shows: round trip = grid received - that tile sent; a tile whose number never
appears in any grid was never shown. The server's own frame-to-grid figure is reported beside it.

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


BARS, OBSERVERS = 8, 8


def stamp(image: np.ndarray, code: int) -> np.ndarray:
    out = image.copy()
    width = out.shape[1] // BARS
    for bit in range(BARS):
        out[: out.shape[0] * 2 // 5, bit * width:(bit + 1) * width] = 255 if code >> bit & 1 else 0
    return out


def read_stamp(cell: np.ndarray) -> int:
    row = cell[cell.shape[0] // 5].mean(axis=1) if cell.ndim == 3 else cell[cell.shape[0] // 5]
    width = cell.shape[1] / BARS
    return sum(1 << bit for bit in range(BARS) if row[int((bit + 0.5) * width)] > 128)


def tiles(count: int = 16) -> list[list[bytes]]:
    """tiles[code][k]: base frame k of Megamind.avi with ``code`` stamped, as JPEG (encoded once, up front)."""
    import cv2

    video = cv2.VideoCapture(str(MEGAMIND))
    bases = []
    while len(bases) < count:
        ok, image = video.read()
        if not ok:
            break
        bases.append(cv2.resize(image, (240, 180)))
    if not bases:
        sys.exit(f"error: {MEGAMIND} missing; run `bash tools/system-packages.sh`")
    quality = [cv2.IMWRITE_JPEG_QUALITY, 70]
    return [[cv2.imencode(".jpg", stamp(b, code), quality)[1].tobytes() for b in bases] for code in range(256)]


async def participant(i: int, port: int, token: str, frames: list[list[bytes]], fps: float, seconds: float,
                      stats: dict, ids: dict) -> None:
    import cv2

    from edgekit.edge_apps.grid import cell_size

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(p.encode_json(p.HELLO, {"token": token, "name": f"sim{i:02d}"}))
    kind, payload = await p.read_message(reader)
    assert kind == p.WELCOME, p.NAMES[kind]
    ids[i] = p.decode_json(payload)["id"]
    grids, sent_at, shown, trips = 0, {}, set(), []
    observer = i < OBSERVERS

    def observe(jpeg: bytes, now: float) -> None:
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
        rank = sorted(ids.values()).index(ids[i])
        cols, rows, _, _ = cell_size(len(ids))
        y, x = divmod(rank, cols)
        h, w = image.shape[0] / rows, image.shape[1] / cols
        code = read_stamp(image[int(y * h):int((y + 1) * h), int(x * w):int((x + 1) * w)])
        candidates = [seq for seq in sent_at if seq % 256 == code and sent_at[seq] <= now]
        if candidates:
            seq = max(candidates)
            if seq not in shown:
                shown.add(seq)
                trips.append(now - sent_at[seq])

    async def receive():
        nonlocal grids
        while True:
            kind, payload = await p.read_message(reader)
            if kind == p.GRID:
                grids += 1
                stats["grid_times"][i].append(time.monotonic())
                if observer and len(ids) == stats["clients"]:
                    observe(payload, time.monotonic())

    stats["grid_times"][i] = []
    receiver = asyncio.create_task(receive())
    start = time.monotonic()
    sent = 0
    try:
        while time.monotonic() - start < seconds:
            if receiver.done():  # the server closed us: a dropped client
                stats["dropped"].append(i)
                return
            writer.write(p.encode_tile({"label": "attentive" if i % 2 else "not attentive", "score": 0.5,
                                        "seq": sent}, frames[sent % 256][(sent + i) % len(frames[0])]))
            sent_at[sent] = time.monotonic()
            await writer.drain()
            sent += 1
            await asyncio.sleep(max(0.0, start + sent / fps - time.monotonic()))
        await asyncio.sleep(0.5)  # the last tiles' grids
        writer.write(p.encode(p.BYE))
        await writer.drain()
    finally:
        receiver.cancel()
        writer.close()
        stats["sent"][i], stats["grids"][i] = sent, grids
        if observer:
            settled = [seq for seq in sent_at if seq >= 2 * fps]  # after everybody joined and the layout settled
            stats["trips"] += trips
            stats["observed"] += len(settled)
            stats["never_shown"] += sum(1 for seq in settled if seq not in shown)


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
        stats = {"dropped": [], "sent": {}, "grids": {}, "grid_times": {}, "trips": [], "observed": 0,
                 "never_shown": 0, "clients": args.clients}
        ids: dict = {}
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
        await asyncio.gather(*(participant(i, port, token, frames, args.fps, args.seconds, stats, ids)
                               for i in range(args.clients)))
        sampler.cancel()
        status = json.loads(urllib.request.urlopen(urllib.request.Request(
                    f"http://127.0.0.1:{http}/status.json", headers={"Authorization": f"Bearer {token}"}), timeout=5).read())
    finally:
        server.terminate()
        server.wait(timeout=30)
    rates = []
    for times in stats["grid_times"].values():  # grids per second over the middle of the run
        times = np.asarray(times)
        middle = times[(times > times[0] + 5) & (times < times[-1] - 2)] if len(times) > 10 else times
        rates.append((len(middle) - 1) / (middle[-1] - middle[0]) if len(middle) > 1 else 0.0)
    trips = np.asarray(stats["trips"]) * 1e3
    t, r = np.array([x for x, _ in rss]), np.array([y for _, y in rss])
    half = len(r) // 2
    return {"clients": args.clients, "fps": args.fps, "seconds": args.seconds, "dropped": stats["dropped"],
            "min_participants_seen": min(counts) if counts else None, "tiles_sent": sum(stats["sent"].values()),
            "grids_received_min": min(stats["grids"].values()), "latency_ms": status["latency_ms"],
            "grids_per_s_min": float(min(rates)), "grids_per_s_mean": float(np.mean(rates)),
            "round_trip_ms": {"p50": float(np.percentile(trips, 50)), "p99": float(np.percentile(trips, 99)),
                              "count": int(trips.size)} if trips.size else None,
            "never_shown_share": stats["never_shown"] / max(1, stats["observed"]),
            "rss_max_mb": float(r.max()) if len(r) else None,
            "rss_mb": rss, "rss_slope_mb_per_min": float(np.polyfit(t, r, 1)[0] * 60) if len(t) > 2 else None,
            "rss_first_half_mean": float(r[:half].mean()), "rss_second_half_mean": float(r[half:].mean()),
            "machine": machine()}


def machine() -> str:
    from edgekit.benchmarks.harness import environment

    env = environment()
    return f"{env['cpu']}, {platform.machine()}, {env['usable_cpus']} cpus, {' '.join(env['isa'])}"


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
            f"grids per second per participant: min {result['grids_per_s_min']:.2f}, mean "
            f"{result['grids_per_s_mean']:.2f}\n"
            + (f"round trip seen by {OBSERVERS} observer clients (tile sent -> grid showing it received): p50 "
               f"{result['round_trip_ms']['p50']:.1f} ms, p99 {result['round_trip_ms']['p99']:.1f} ms over "
               f"{result['round_trip_ms']['count']} tiles\n" if result["round_trip_ms"] else "round trip: none seen\n")
            + f"tiles never shown (observers): {100 * result['never_shown_share']:.1f}%\n"
            f"server's own frame-to-grid latency: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms over "
            f"{lat['count']} tiles\n"
            f"server RSS max {result['rss_max_mb']:.0f} MB\n"
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
