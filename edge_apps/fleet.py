"""Fleet telemetry over MQTT: devices publish how they are doing, `edgekit fleet status` reads it back.

The transport is a broker the user already runs (Eclipse Mosquitto, or any MQTT 3.1.1 broker) and the
`paho-mqtt` client (the torch-free extra `edgekit[fleet]`). edgekit writes no broker.

Topics, all under the fleet's prefix (so one fleet never reads or writes another's):

- ``PREFIX/devices/DEVICE/status``: ``online`` when a device connects, ``offline`` when it stops; the broker
  publishes ``offline`` itself (the MQTT "last will") when a device vanishes without saying goodbye. Retained,
  so a reader that connects later sees every device's last state at once.
- ``PREFIX/devices/DEVICE/telemetry``: every ``interval`` seconds a compact JSON document (:func:`system_status`
  plus what the publisher's ``collect`` gives: model name and hash, FPS, per-stage p50/p90, glass-to-glass,
  dropped frames, last alert). Retained too: the newest one per device.
- ``PREFIX/devices/DEVICE/doctor``: `edgekit doctor --fleet` publishes its checks once (retained).
- ``PREFIX/devices/DEVICE/agent``, ``agent-status`` and ``rollout``: the rollout agent beside the app
  (`edgekit fleet agent`, edge_apps/rollout.py): its model, its own online state, the last rollout's outcome.

Security: ``mqtts://`` connects with TLS (the system's CAs, or ``ca`` for a private one); credentials are
per device, the user name in the URL and the password from ``$EDGEKIT_FLEET_PASSWORD`` (never in the URL, so
it stays out of process lists and logs). What a reader receives is untrusted: payloads over
``MAX_PAYLOAD`` bytes, non-JSON and non-object documents are dropped, and at most ``MAX_DEVICES`` are kept.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlsplit

from edgekit.core import checks
from edgekit.core.errors import BadInputError, MissingExtraError

log = logging.getLogger(__name__)

MAX_PAYLOAD = 64 * 1024  # bytes of one telemetry document a reader accepts
# Seconds between MQTT pings when nothing else is sent; the broker declares a silent client gone (and
# publishes its "offline" will) after 1.5x this: a device that loses power shows offline within 15 s.
KEEPALIVE = 10
MAX_DEVICES = 10_000  # devices a reader keeps
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # a device id or one prefix level: no MQTT wildcards or separators


def _paho():
    try:
        import paho.mqtt.client as mqtt
    except ImportError as exc:
        raise MissingExtraError("paho-mqtt", "fleet", "fleet telemetry over MQTT") from exc
    return mqtt


def check_name(what: str, value: str) -> str:
    if not _NAME.match(value or ""):
        raise BadInputError(f"{what} must be 1-64 letters, digits, '.', '_' or '-', got {value!r}")
    return value


def default_device_id() -> str:
    """The host name, cut to what a topic level allows."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64].strip("-")
    return name or "device"


@dataclass(frozen=True)
class FleetTarget:
    """Where a fleet lives: ``mqtt[s]://[user@]host[:port]/prefix[/more]``."""
    host: str
    port: int
    prefix: str
    tls: bool = False
    username: str | None = None
    ca: str | None = None  # CA bundle for a broker with a private certificate (mqtts)

    @classmethod
    def parse(cls, url: str, ca: str | None = None) -> "FleetTarget":
        parts = urlsplit(url or "")
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise BadInputError(f"--fleet must look like mqtt://host[:port]/prefix or mqtts://..., got {url!r}")
        if parts.password is not None:
            raise BadInputError("--fleet: put the password in $EDGEKIT_FLEET_PASSWORD, not in the URL")
        if parts.query or parts.fragment:
            raise BadInputError(f"--fleet: no query or fragment expected in {url!r}")
        levels = [level for level in parts.path.split("/") if level]
        if not levels:
            raise BadInputError(f"--fleet {url!r} names no topic prefix: mqtt://host/myfleet")
        for level in levels:
            check_name("--fleet prefix levels", level)
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError as exc:
            raise BadInputError(f"--fleet: bad port in {url!r}") from exc
        checks.port("--fleet port", port)
        if ca is not None and not Path(ca).is_file():
            raise BadInputError(f"--fleet-ca {ca}: no such file")
        return cls(host=parts.hostname, port=port, prefix="/".join(levels), tls=parts.scheme == "mqtts",
                   username=unquote(parts.username) if parts.username else None, ca=ca)

    def topic(self, device: str, kind: str) -> str:
        return f"{self.prefix}/devices/{device}/{kind}"

    def __str__(self) -> str:
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}/{self.prefix}"


def connect(target: FleetTarget, client_id: str, will: tuple[str, str] | None = None, timeout: float = 10.0):
    """A connected paho client with its network loop running; raises BadInputError when the broker refuses
    or cannot be reached within ``timeout``."""
    mqtt = _paho()
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv311)
    if target.username:
        client.username_pw_set(target.username, os.environ.get("EDGEKIT_FLEET_PASSWORD"))
    if target.tls:
        client.tls_set(ca_certs=target.ca)
    if will:
        client.will_set(will[0], will[1], qos=1, retain=True)
    done, result = threading.Event(), {}

    def on_connect(client, userdata, flags, reason_code, properties):
        result["code"] = reason_code
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(target.host, target.port, keepalive=KEEPALIVE)
    except (OSError, ValueError) as exc:
        raise BadInputError(f"cannot reach the fleet broker {target}: {exc}") from exc
    client.loop_start()
    if not done.wait(timeout) or result["code"].is_failure:
        client.loop_stop()
        client.disconnect()
        why = result["code"] if done.is_set() else f"no answer in {timeout:g} s"
        raise BadInputError(f"the fleet broker {target} refused the connection: {why}")
    return client


def _read_first_line(path: Path) -> str | None:
    try:
        return path.read_text().split("\n", 1)[0].strip()
    except OSError:
        return None


def cpu_temperature_c() -> float | None:
    """The hottest CPU-like thermal zone (Raspberry Pi: cpu-thermal), None where the platform shows none."""
    temps = []
    for zone in Path("/sys/class/thermal").glob("thermal_zone*"):
        kind, value = _read_first_line(zone / "type") or "", _read_first_line(zone / "temp")
        if value and value.lstrip("-").isdigit() and ("cpu" in kind.lower() or "soc" in kind.lower()
                                                       or "pkg" in kind.lower()):
            temps.append(int(value) / 1000.0)
    return max(temps) if temps else None


def power_w() -> float | None:
    """Battery or supply power draw where the kernel reports it (laptops: power_now in microwatts)."""
    total = None
    for supply in Path("/sys/class/power_supply").glob("*"):
        value = _read_first_line(supply / "power_now")
        if value and value.isdigit():
            total = (total or 0.0) + int(value) / 1e6
    return total


def system_status() -> dict:
    """What every telemetry document carries about the machine itself."""
    from edgekit.core.hardware import current_rss_mb

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"rss_mb": round(current_rss_mb() or 0.0, 1),
            "cpu_load": round(load / checks.usable_cpus(), 3) if load is not None else None,
            "cpu_temp_c": cpu_temperature_c(), "power_w": power_w()}


class TelemetryPublisher:
    """Publishes ``collect()`` + :func:`system_status` every ``interval`` seconds on a thread of its own.

    ``start()`` connects (an unreachable broker fails the command before any other work) and marks the device
    online; ``close()`` stops the thread, joins it, publishes the last document and ``offline``, then
    disconnects. A broker that goes away later is logged, not fatal: paho reconnects on its own."""

    def __init__(self, target: FleetTarget, device: str, collect: Callable[[], dict], interval: float = 5.0,
                 kind: str = "telemetry"):
        checks.within("--fleet-interval", interval, 0.05, 3600)
        self.target, self.device = target, check_name("--device-id", device)
        self.collect, self.interval = collect, interval
        # `run`/`join` publish "telemetry" and "status"; the rollout agent beside them "agent" and "agent-status"
        self.kind, self.status_kind = kind, "status" if kind == "telemetry" else f"{kind}-status"
        self.client = None
        self.sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "TelemetryPublisher":
        status = self.target.topic(self.device, self.status_kind)
        self.client = connect(self.target, f"edgekit-{self.kind}-{self.device}", will=(status, "offline"))
        self.client.publish(status, "online", qos=1, retain=True)
        self._thread = threading.Thread(target=self._loop, name="fleet-telemetry", daemon=True)
        self._thread.start()
        return self

    def document(self) -> dict:
        return {"device": self.device, "time": round(time.time(), 3), **system_status(), **self.collect()}

    def publish_once(self, wait: float = 5.0) -> None:
        info = self.client.publish(self.target.topic(self.device, self.kind),
                                   json.dumps(self.document(), default=str), qos=1, retain=True)
        info.wait_for_publish(wait)
        self.sent += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.publish_once(wait=self.interval)
            except (RuntimeError, ValueError, OSError) as exc:  # broker gone for now: paho reconnects
                log.warning("fleet telemetry not sent: %s", exc)

    def close(self) -> None:
        if self.client is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.publish_once(wait=2.0)
            self.client.publish(self.target.topic(self.device, self.status_kind), "offline", qos=1,
                                retain=True).wait_for_publish(2.0)
        except (RuntimeError, ValueError, OSError) as exc:
            log.warning("fleet: could not say goodbye: %s", exc)
        self.client.disconnect()
        self.client.loop_stop()
        self.client = None


def publish_report(target: FleetTarget, device: str, document: dict, timeout: float = 10.0) -> None:
    """One retained document on ``PREFIX/devices/DEVICE/doctor`` (`edgekit doctor --fleet`), then disconnect."""
    client = connect(target, f"edgekit-doctor-{check_name('--device-id', device)}", timeout=timeout)
    try:
        info = client.publish(target.topic(device, "doctor"), json.dumps(document, default=str), qos=1, retain=True)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise BadInputError(f"the fleet broker {target} did not take the doctor report in {timeout:g} s")
    finally:
        client.disconnect()
        client.loop_stop()


class FleetView:
    """A live picture of every device under a prefix: one subscription to its status, telemetry, doctor,
    agent and rollout topics, kept up to date by the MQTT thread (retained states arrive at once)."""

    KINDS = ("status", "telemetry", "doctor", "agent", "agent-status", "rollout")

    def __init__(self, target: FleetTarget):
        self.target = target
        self._devices: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._pattern = re.compile(rf"^{re.escape(target.prefix)}/devices/([^/]+)/({'|'.join(self.KINDS)})$")
        self.client = None

    def _on_message(self, client, userdata, message) -> None:
        match = self._pattern.match(message.topic)
        if not match or len(message.payload) > MAX_PAYLOAD or not _NAME.match(match.group(1)):
            return
        device, kind = match.groups()
        with self._lock:
            if device not in self._devices and len(self._devices) >= MAX_DEVICES:
                return
            row = self._devices.setdefault(device, {"device": device, "online": None, "telemetry": None,
                                                    "doctor": None, "agent_online": None, "agent": None,
                                                    "rollout": None})
            if kind.endswith("status"):
                row["online" if kind == "status" else "agent_online"] = message.payload == b"online"
                return
            try:
                document = json.loads(message.payload)
            except (UnicodeDecodeError, ValueError):
                return
            if isinstance(document, dict):
                row[kind] = document

    def start(self) -> "FleetView":
        self.client = connect(self.target, f"edgekit-reader-{os.getpid()}-{int(time.time() * 1000) % 100000}")
        self.client.on_message = self._on_message
        self.client.subscribe([(self.target.topic("+", kind), 1) for kind in self.KINDS])
        return self

    def rows(self) -> list[dict]:
        with self._lock:
            return [json.loads(json.dumps(self._devices[name])) for name in sorted(self._devices)]

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None


def read_fleet(target: FleetTarget, wait: float = 1.5) -> list[dict]:
    """Every device's retained status and newest telemetry under ``target``'s prefix, one row per device."""
    checks.within("--wait", wait, 0.1, 60)
    view = FleetView(target).start()
    try:
        time.sleep(wait)  # retained messages arrive at once; live ones during the wait
    finally:
        view.close()
    return view.rows()


# The live page of `edgekit fleet status --serve`: the table of format_fleet, refreshed from /status.json.
FLEET_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;background:#111;color:#eee;margin:1em}} td,th{{padding:2px 10px;text-align:right}}
td:first-child,th:first-child{{text-align:left}} .offline{{color:#888}} .online{{color:#7f7}}</style></head>
<body><h3>{title}</h3><table><thead><tr><th>device</th><th>state</th><th>model</th><th>hash</th><th>FPS</th>
<th>infer p50 ms</th><th>RSS MB</th><th>temp C</th><th>rollout</th><th>seen</th></tr></thead>
<tbody id="devices"></tbody></table><p id="note">waiting for the fleet...</p>
<script>
function cell(text) {{ const td = document.createElement('td'); td.textContent = text; return td; }}
function num(v, digits) {{ return typeof v === 'number' ? v.toFixed(digits) : '-'; }}
async function poll() {{
  try {{
    const r = await fetch('/status.json', {{cache: 'no-store'}});
    const data = await r.json();
    const body = document.getElementById('devices'); body.replaceChildren();
    const now = Date.now() / 1000;
    for (const d of data.devices) {{
      const t = d.telemetry || {{}}, a = d.agent || {{}}, m = t.model || a.model || {{}};
      const infer = (t.stages || {{}}).infer || {{}};
      const state = d.online ? 'online' : (d.agent_online ? 'agent' : (d.online === false ? 'offline' : '?'));
      const tr = document.createElement('tr'); tr.className = 'device ' + state; tr.dataset.device = d.device;
      const seen = t.time || a.time;
      for (const text of [d.device, state, m.name || '-', (m.sha256 || '-').slice(0, 12), num(t.fps, 1),
                          num(infer.p50_ms, 2), num(t.rss_mb || a.rss_mb, 0), num(t.cpu_temp_c, 1),
                          (d.rollout || {{}}).state || '-', seen ? (now - seen).toFixed(0) + ' s' : '-'])
        tr.appendChild(cell(text));
      body.appendChild(tr);
    }}
    document.getElementById('note').textContent = data.devices.length + ' devices';
  }} catch (e) {{ document.getElementById('note').textContent = 'server gone: ' + e; }}
}}
setInterval(poll, 1000); poll();
</script></body></html>
"""


def _number(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def format_fleet(rows: list[dict], now: float | None = None) -> str:
    now = time.time() if now is None else now
    lines = [f"{'device':<20} {'state':<8} {'model':<22} {'hash':<12} {'FPS':>6} {'infer p50':>9} "
             f"{'RSS MB':>7} {'temp C':>6} {'seen':>7}"]
    for row in rows:
        t = row["telemetry"] if isinstance(row.get("telemetry"), dict) else {}
        agent = row["agent"] if isinstance(row.get("agent"), dict) else {}
        model = t.get("model") if isinstance(t.get("model"), dict) else \
            agent.get("model") if isinstance(agent.get("model"), dict) else {}
        stages = t.get("stages") if isinstance(t.get("stages"), dict) else {}
        infer = stages.get("infer") if isinstance(stages.get("infer"), dict) else {}
        seen = t.get("time", agent.get("time"))
        age = f"{now - seen:.0f} s" if isinstance(seen, (int, float)) and not isinstance(seen, bool) else "-"
        state = {True: "online", False: "offline", None: "?"}[row.get("online")]
        if row.get("online") is not True and row.get("agent_online") is not None:  # only the rollout agent
            state = "agent" if row["agent_online"] else "offline"
        lines.append(f"{row['device'][:20]:<20} {state:<8} {str(model.get('name', '-'))[:22]:<22} "
                     f"{str(model.get('sha256', '-'))[:12]:<12} {_number(t.get('fps'), '6.1f'):>6} "
                     f"{_number(infer.get('p50_ms'), '7.2f'):>7} ms {_number(t.get('rss_mb'), '7.0f'):>7} "
                     f"{_number(t.get('cpu_temp_c'), '6.1f'):>6} {age:>7}")
    if not rows:
        lines.append("(no device has reported under this prefix)")
    return "\n".join(lines)
