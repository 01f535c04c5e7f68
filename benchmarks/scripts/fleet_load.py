"""Fleet telemetry load: N simulated devices publishing every second through one Mosquitto broker.

Each device is edgekit's own publisher (`edgekit.edge_apps.fleet.TelemetryPublisher`, its own MQTT
connection, last will and thread, the machine figures read from /proc and /sys as on a device) with a
pipeline-shaped document in place of a camera; devices are spread over worker processes. One reader
subscribes to the whole fleet as `edgekit fleet status` does and records, for every message, the delay
from the device's timestamp to its arrival (one machine, one clock). The broker's CPU share comes from
/proc/PID/stat over the measured window.

Usage: python benchmarks/scripts/fleet_load.py [--devices 200] [--interval 1] [--seconds 30] [--workers 4]
Writes benchmarks/results/fleet_load.{txt,json} unless --results says otherwise.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_broker(folder: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = folder / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 10000\n"
                      + ("user root\n" if os.geteuid() == 0 else ""))
    proc = subprocess.Popen(["mosquitto", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    raise SystemExit("mosquitto did not start (apt-get install mosquitto)")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker(url: str, names: list[str], interval: float, stop_at: float) -> None:
    from edgekit.edge_apps.fleet import FleetTarget, TelemetryPublisher

    target = FleetTarget.parse(url)
    rng = np.random.default_rng(len(names))
    frames = {"n": 0}

    def collect() -> dict:  # the shape of Pipeline.telemetry(), with plausible numbers
        frames["n"] += 25
        return {"model": {"name": "model_int8.onnx", "sha256": "9b255a9746ef0a1c", "runtime": "onnxruntime"},
                "app": "driver", "frames": frames["n"], "fps": round(float(rng.normal(24, 1)), 2),
                "stages": {s: {"p50_ms": round(float(rng.uniform(1, 9)), 3), "p90_ms": round(float(rng.uniform(9, 20)), 3)}
                           for s in ("wait", "prepare", "infer", "smooth")},
                "glass_to_glass": {"p50_ms": 30.1, "p90_ms": 41.7}, "dropped_frames": 0,
                "label": "c0", "alerts": [], "last_alert": None}

    publishers = []
    for name in names:
        publishers.append(TelemetryPublisher(target, name, collect, interval).start())
        time.sleep(interval / len(names))  # spread the phases as real devices' clocks would be
    time.sleep(max(0.0, stop_at - time.time()))
    for publisher in publishers:
        publisher.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window, after every device is up")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--results", default="benchmarks/results/fleet_load")
    args = parser.parse_args()
    if shutil.which("mosquitto") is None:
        raise SystemExit("needs mosquitto: apt-get install mosquitto")
    import paho.mqtt.client as mqtt

    folder = Path(tempfile.mkdtemp(prefix="fleet_load_"))
    broker, port = start_broker(folder)
    url = f"mqtt://127.0.0.1:{port}/load"
    delays, lock, window = [], threading.Lock(), {"open": False}

    def on_message(client, userdata, message):
        arrived = time.time()
        if message.retain or not message.topic.endswith("/telemetry"):
            return
        sent = json.loads(message.payload)["time"]
        with lock:
            if window["open"]:
                delays.append(arrived - sent)

    reader = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="load-reader")
    reader.on_message = on_message
    reader.connect("127.0.0.1", port)
    reader.subscribe("load/devices/+/telemetry", qos=1)
    reader.loop_start()
    ramp = 2.0 * args.interval + 5.0
    start = time.time()
    stop_at = start + ramp + args.seconds + 2.0 * args.interval + 2.0  # goodbyes fall after the window
    names = [f"dev-{i:04d}" for i in range(args.devices)]
    procs = [multiprocessing.Process(target=worker, args=(url, names[w::args.workers], args.interval, stop_at))
             for w in range(args.workers)]
    for proc in procs:
        proc.start()
    time.sleep(ramp)
    with lock:
        window["open"] = True
    t0, cpu0 = time.time(), cpu_seconds(broker.pid)
    time.sleep(args.seconds)
    t1, cpu1 = time.time(), cpu_seconds(broker.pid)
    with lock:
        window["open"] = False
        measured = np.asarray(delays) * 1e3
    for proc in procs:
        proc.join(60)
    reader.disconnect()
    reader.loop_stop()
    broker.terminate()
    broker.wait(10)
    shutil.rmtree(folder, ignore_errors=True)

    expected = args.devices * args.seconds / args.interval
    broker_ver = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()[0]
    result = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "cpu_model": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), ""),
        "broker": broker_ver, "paho_mqtt": __import__("paho.mqtt").mqtt.__version__,
        "devices": args.devices, "interval_s": args.interval, "seconds": round(t1 - t0, 2), "workers": args.workers,
        "messages": int(len(measured)), "expected_messages": int(expected),
        "messages_per_s": round(len(measured) / (t1 - t0), 1),
        "broker_cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 2),
        "latency_ms": {q: round(float(np.percentile(measured, p)), 2) for q, p in (("p50", 50), ("p90", 90), ("p99", 99))}
        | {"max": round(float(measured.max()), 2)} if len(measured) else None,
    }
    lines = [f"# {result['command']}", f"# CPU: {result['cpu_model']}, {os.cpu_count()} cpus; {broker_ver}; "
             f"paho-mqtt {result['paho_mqtt']}; python {platform.python_version()}",
             f"devices {args.devices} (edgekit TelemetryPublisher each, {args.workers} processes on the same machine "
             f"as the broker), one message per {args.interval:g} s each, measured {result['seconds']} s",
             f"telemetry messages received {result['messages']} of {result['expected_messages']} expected "
             f"({result['messages_per_s']}/s)",
             f"broker CPU {result['broker_cpu_percent']}% of one core",
             "device timestamp -> reader arrival: " + (", ".join(f"{k} {v} ms" for k, v in result["latency_ms"].items())
                                                      if result["latency_ms"] else "no messages")]
    text = "\n".join(lines)
    print(text)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results + ".txt").write_text(text + "\n")
    Path(args.results + ".json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
