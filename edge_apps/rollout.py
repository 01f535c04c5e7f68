"""Signed model rollout to a fleet over MQTT, with a health check, an atomic swap and rollback.

The publisher (`edgekit fleet publish FOLDER --to GROUP --key KEY`) describes a model folder in a manifest
(every file's size and SHA-256, which file is the model, and health samples: a few inputs and the outputs
the publisher's onnxruntime gave for them), signs the manifest's canonical bytes with an Ed25519 key, serves
the files over HTTP (127.0.0.1 unless told otherwise, under a random path token), and announces the rollout,
retained, on ``PREFIX/rollout/GROUP``. The rollout id is the manifest's own hash: a bundle is addressed by
what it holds.

A device (`edgekit fleet agent --group G --trust KEY.pub --dir MODELS`) that receives an announcement:
1. verifies the signature with the key it trusts and that the id is the manifest's hash (an unsigned,
   wrongly signed or altered announcement is refused and reported, nothing is downloaded);
2. decides whether it is in the rollout's percentage (a hash of device id and rollout id, so the same
   devices take part however often the message arrives, and a larger percentage keeps them);
3. downloads every file into ``MODELS/.staging-ID`` with the manifest's sizes as hard limits and checks
   each SHA-256;
4. health check: the model loads in its runtime and reproduces the publisher's outputs on the health
   samples (same top-1, logits within tolerance);
5. swaps ``MODELS/current`` (a symbolic link, replaced atomically by rename) to the new folder, keeping
   the one before as ``MODELS/previous``;
6. publishes its state on ``PREFIX/devices/DEVICE/rollout`` (retained): active, refused, failed or
   rolled-back, with the reason.
``rollback()`` points ``current`` back at ``previous`` (used when the health check of what runs after the
swap fails). A running `edgekit run --model MODELS/current/<model>` reloads the model when the link moves.
"""
from __future__ import annotations

import base64
import hashlib
import http.server
import json
import logging
import os
import queue
import secrets
import shutil
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.core import checks
from edgekit.core.errors import BadInputError, EdgekitError, MissingExtraError
from edgekit.edge_apps.fleet import FleetTarget, check_name, connect

log = logging.getLogger(__name__)

MAX_FILES = 64
MAX_BUNDLE_BYTES = 512 * 1024 * 1024
MAX_ANNOUNCEMENT = 256 * 1024
HEALTH_SAMPLES = 4


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        raise MissingExtraError("cryptography", "fleet", "signed model rollout") from exc
    return serialization, ed25519


def canonical(document: dict) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def keygen(private_path: Path) -> tuple[Path, Path]:
    """An Ed25519 key pair: ``private_path`` (PEM, mode 0600, for the publisher) and ``.pub`` beside it (for
    the devices' --trust). Refuses to overwrite a key."""
    serialization, ed25519 = _crypto()
    private_path, public_path = Path(private_path), Path(str(private_path) + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise BadInputError(f"{path} exists; not overwriting a key")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def _load_key(path: str | Path, private: bool):
    serialization, ed25519 = _crypto()
    try:
        data = Path(path).read_bytes()
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except (OSError, ValueError, TypeError) as exc:
        raise BadInputError(f"cannot read the {'private' if private else 'public'} key {path}: {exc}") from exc
    wanted = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, wanted):
        raise BadInputError(f"{path} is not an Ed25519 key (make one with `edgekit fleet keygen`)")
    return key


def health_samples(model: Path, count: int = HEALTH_SAMPLES) -> dict:
    """Inputs (zeros, a mid-grey and seeded noise in the model's own input shape) and the outputs this
    machine's runtime gives for them: the device must reproduce these before it switches."""
    from edgekit.runtimes import RuntimeOptions, load_runtime

    rt = load_runtime(model, None, RuntimeOptions(threads=1))
    try:
        shape = rt.spec.input_shape(1)
        rng = np.random.default_rng(0)
        inputs = [np.zeros(shape, np.float32), np.full(shape, 0.5, np.float32)]
        inputs += [rng.normal(0, 1, shape).astype(np.float32) for _ in range(count - 2)]
        outputs = [rt.infer(x) for x in inputs]
    finally:
        rt.close()
    return {"seed": 0, "shape": list(shape), "outputs": [o.astype(float).round(6).tolist() for o in outputs]}


def sample_inputs(health: dict) -> list[np.ndarray]:
    shape = tuple(int(v) for v in health["shape"])
    rng = np.random.default_rng(int(health["seed"]))
    inputs = [np.zeros(shape, np.float32), np.full(shape, 0.5, np.float32)]
    return inputs + [rng.normal(0, 1, shape).astype(np.float32) for _ in range(len(health["outputs"]) - 2)]


def build_manifest(folder: Path, model: str | None = None, name: str | None = None) -> dict:
    """Every file under ``folder`` with its size and SHA-256, the model file (the only .onnx unless named)
    and its health samples."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"{folder}: not a folder (a fleet bundle is a folder with the model and its spec)")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files or len(files) > MAX_FILES:
        raise BadInputError(f"{folder}: a bundle holds 1 to {MAX_FILES} files, found {len(files)}")
    if sum(p.stat().st_size for p in files) > MAX_BUNDLE_BYTES:
        raise BadInputError(f"{folder}: more than {MAX_BUNDLE_BYTES >> 20} MB")
    if model is None:
        candidates = [p for p in files if p.suffix == ".onnx"]
        if len(candidates) != 1:
            raise BadInputError(f"{folder}: name the model with --model (found {len(candidates)} .onnx files)")
        model = candidates[0].relative_to(folder).as_posix()
    if not (folder / model).is_file():
        raise BadInputError(f"{folder}: no model file {model}")
    return {"format": 1, "name": name or folder.name, "model": model, "created": round(time.time(), 3),
            "files": {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256_file(p)}
                      for p in files},
            "health": health_samples(folder / model)}


def rollout_id(manifest: dict) -> str:
    return sha256_bytes(canonical(manifest))[:16]


def sign(manifest: dict, key_path: str | Path) -> str:
    return base64.b64encode(_load_key(key_path, private=True).sign(canonical(manifest))).decode()


def check_announcement(payload: bytes, trusted_key) -> dict:
    """The announcement as a dict after every check a device makes before downloading anything: size, JSON,
    the signature over the manifest by ``trusted_key``, the id being the manifest's hash, the percentage,
    and file names that stay inside the bundle folder. Raises BadInputError with the reason."""
    from cryptography.exceptions import InvalidSignature

    if len(payload) > MAX_ANNOUNCEMENT:
        raise BadInputError(f"announcement of {len(payload)} bytes is over {MAX_ANNOUNCEMENT}")
    try:
        message = json.loads(payload)
        manifest, signature = message["manifest"], base64.b64decode(message["signature"], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInputError(f"announcement is not a signed manifest: {exc}") from exc
    if not isinstance(manifest, dict):
        raise BadInputError("announcement: the manifest is not an object")
    try:
        trusted_key.verify(signature, canonical(manifest))
    except InvalidSignature:
        raise BadInputError("the signature does not match the manifest under the trusted key") from None
    if message.get("id") != rollout_id(manifest):
        raise BadInputError("the rollout id is not the manifest's hash")
    percent = message.get("percent")
    if not isinstance(percent, (int, float)) or isinstance(percent, bool) or not 0 < percent <= 100:
        raise BadInputError(f"percent must be in (0, 100], got {percent!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not 0 < len(files) <= MAX_FILES or manifest.get("model") not in files:
        raise BadInputError("manifest: bad file list")
    for name, info in files.items():
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or not parts or not isinstance(info, dict) or \
                not isinstance(info.get("size"), int) or not 0 <= info["size"] <= MAX_BUNDLE_BYTES:
            raise BadInputError(f"manifest: bad file entry {name!r}")
    if not isinstance(message.get("url"), str) or not message["url"].startswith(("http://", "https://")):
        raise BadInputError("announcement: no http(s) url for the files")
    return message


def selected(device: str, rollout: str, percent: float) -> bool:
    """Whether ``device`` takes part in a rollout to ``percent`` of its group: a stable hash of both ids."""
    position = int(sha256_bytes(f"{device}/{rollout}".encode())[:8], 16) / 0x1_0000_0000
    return position * 100 < percent


class BundleServer:
    """Serves a bundle's files over HTTP under ``/<token>/<name>``; nothing else answers (404)."""

    def __init__(self, folder: Path, files: list[str], address: str = "127.0.0.1:0"):
        host, _, port = address.rpartition(":")
        if not port.isdigit():
            raise BadInputError(f"--serve must be HOST:PORT, got {address!r}")
        checks.port("--serve port", int(port))
        self.folder, self.files, self.token = Path(folder), set(files), secrets.token_urlsafe(16)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                prefix = f"/{server.token}/"
                name = self.path[len(prefix):] if self.path.startswith(prefix) else None
                if name not in server.files:
                    self.send_error(404)
                    return
                data = (server.folder / name).read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="bundle-server", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/{self.token}/"

    def close(self) -> None:
        self.httpd.shutdown()
        self.thread.join()
        self.httpd.server_close()


def announce(target: FleetTarget, group: str, manifest: dict, signature: str, url: str, percent: float) -> dict:
    """Publish (retained) the rollout of a signed manifest to ``group``."""
    checks.within("--percent", percent, 0, 100, low_open=True)
    message = {"id": rollout_id(manifest), "manifest": manifest, "signature": signature, "url": url,
               "percent": percent, "group": check_name("--to", group)}
    client = connect(target, f"edgekit-publisher-{os.getpid()}")
    try:
        info = client.publish(f"{target.prefix}/rollout/{group}", canonical(message), qos=1, retain=True)
        info.wait_for_publish(10)
        if not info.is_published():
            raise BadInputError(f"the fleet broker {target} did not take the announcement")
    finally:
        client.disconnect()
        client.loop_stop()
    return message


def _download(url: str, expected_size: int, path: Path) -> None:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (http(s) checked in the announcement)
        data = response.read(expected_size + 1)
    if len(data) != expected_size:
        raise BadInputError(f"{path.name}: got {len(data)} bytes, the manifest says {expected_size}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def health_check(model: Path, health: dict, tolerance: float = 0.05) -> None:
    """The model loads and reproduces the publisher's outputs on the health samples: the same top-1 and
    logits within ``tolerance`` of the publisher's logit range. Raises BadInputError saying what broke."""
    from edgekit.runtimes import RuntimeOptions, load_runtime

    rt = load_runtime(model, None, RuntimeOptions(threads=1))
    try:
        for i, (x, expected) in enumerate(zip(sample_inputs(health), health["outputs"])):
            got, want = rt.infer(x), np.asarray(expected, np.float32)
            if got.shape != want.shape or not np.isfinite(got).all():
                raise BadInputError(f"health sample {i}: output shape {got.shape} or values are not the publisher's")
            span = float(want.max() - want.min()) or 1.0
            if (want.shape[-1] > 1 and int(got.argmax()) != int(want.argmax())) or \
                    float(np.abs(got - want).max()) > tolerance * span:
                raise BadInputError(f"health sample {i}: outputs differ from the publisher's "
                                    f"(max |diff| {float(np.abs(got - want).max()):.3g})")
    finally:
        rt.close()


@dataclass
class RolloutState:
    id: str | None = None
    state: str = "idle"  # active, refused, failed, skipped, rolled-back
    why: str = ""


class RolloutAgent:
    """The device side (see the module docstring). Announcements are handled one at a time on the agent's
    own thread, never on the MQTT network thread; ``close()`` stops it, joins it, then disconnects."""

    def __init__(self, target: FleetTarget, group: str, trusted_key_path: str | Path, models: Path, device: str,
                 on_swap: Callable[[Path], None] | None = None, probation: float = 0.0,
                 extra_check: Callable[[Path], None] | None = None):
        checks.within("--probation", probation, 0, 86_400)
        self.target, self.group, self.device = target, check_name("--group", group), check_name("--device-id", device)
        self.probation = probation
        self.extra_check = extra_check  # more of the health check (the CLI passes `edgekit doctor`'s verdict)
        self._run_model: str | None = None  # model hash the device's `edgekit run` last reported with frames
        self._run_seen = threading.Condition()
        self.key = _load_key(trusted_key_path, private=False)
        self.models = Path(models)
        self.models.mkdir(parents=True, exist_ok=True)
        self.on_swap = on_swap
        self.state = RolloutState(id=self.current_id())
        self.handled: list[RolloutState] = []
        self._inbox: queue.Queue = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._work, name="rollout-agent", daemon=True)
        self.client = None

    def current_id(self) -> str | None:
        link = self.models / "current"
        return os.readlink(link) if link.is_symlink() else None

    def start(self) -> "RolloutAgent":
        self.client = connect(self.target, f"edgekit-rollout-{self.device}")
        rollouts, telemetry = f"{self.target.prefix}/rollout/{self.group}", self.target.topic(self.device, "telemetry")

        def on_message(client, userdata, message):
            if message.topic == rollouts:
                self._offer(message.payload)
            elif message.topic == telemetry and len(message.payload) <= MAX_ANNOUNCEMENT:
                self._saw_run(message.payload)

        self.client.on_message = on_message
        self.client.subscribe([(rollouts, 1), (telemetry, 1)])
        self._thread.start()
        return self

    def _offer(self, payload: bytes) -> None:
        try:
            self._inbox.put_nowait(payload)
        except queue.Full:
            log.warning("rollout agent busy: an announcement was dropped")

    def _saw_run(self, payload: bytes) -> None:
        """The device's own `edgekit run` telemetry: which model it runs, if it is running frames."""
        try:
            document = json.loads(payload)
            model = document["model"]["sha256"] if document.get("fps", 0) > 0 else None
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        with self._run_seen:
            self._run_model = model
            self._run_seen.notify_all()

    def _run_confirms(self, sha256: str) -> bool:
        """Whether the device's run reports frames on the model with this hash within the probation."""
        deadline = time.monotonic() + self.probation
        with self._run_seen:
            while self._run_model != sha256[:16]:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._run_seen.wait(left)
        return True

    def _work(self) -> None:
        while True:
            payload = self._inbox.get()
            if payload is None:
                return
            try:
                self.handle(payload)
            except Exception as exc:  # noqa: BLE001 - the agent outlives one bad rollout; reported, logged
                log.exception("rollout agent: unexpected error")
                self._report(RolloutState(None, "failed", f"internal error: {type(exc).__name__}: {exc}"))

    def _report(self, state: RolloutState) -> None:
        self.state = state
        self.handled.append(state)
        log.info("rollout %s: %s %s", state.id, state.state, state.why)
        if self.client is not None:
            self.client.publish(self.target.topic(self.device, "rollout"),
                                json.dumps({"id": state.id, "state": state.state, "why": state.why,
                                            "current": self.current_id(), "time": round(time.time(), 3)}),
                                qos=1, retain=True)

    def handle(self, payload: bytes) -> RolloutState:
        try:
            message = check_announcement(payload, self.key)
        except BadInputError as exc:
            state = RolloutState(None, "refused", str(exc))
            self._report(state)
            return state
        rid, manifest = message["id"], message["manifest"]
        if rid == self.current_id():
            return self.state
        if not selected(self.device, rid, message["percent"]):
            state = RolloutState(rid, "skipped", f"outside the {message['percent']:g}% of this rollout")
            self._report(state)
            return state
        staging = self.models / f".staging-{rid}"
        final = self.models / rid
        try:
            shutil.rmtree(staging, ignore_errors=True)
            for name, info in manifest["files"].items():
                path = staging / name
                _download(message["url"] + name, info["size"], path)
                if _sha256_file(path) != info["sha256"]:
                    raise BadInputError(f"{name}: SHA-256 does not match the manifest")
            health_check(staging / manifest["model"], manifest["health"])
            if self.extra_check is not None:
                self.extra_check(staging / manifest["model"])
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
            self._swap(rid)
        except (EdgekitError, OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            state = RolloutState(rid, "failed", str(exc) if isinstance(exc, EdgekitError)
                                 else f"{type(exc).__name__}: {exc}")
            self._report(state)
            return state
        if self.probation and not self._run_confirms(manifest["files"][manifest["model"]]["sha256"]):
            return self.rollback(f"rollout {rid}: the device's run did not report the new model running within "
                                 f"{self.probation:g} s")
        state = RolloutState(rid, "active", f"model {manifest['model']}")
        self._report(state)
        return state

    def _point(self, name: str, target: str) -> None:
        """Atomically make MODELS/name a symbolic link to target (a new link renamed over the old one)."""
        temp = self.models / f".{name}-{secrets.token_hex(4)}"
        os.symlink(target, temp)
        os.replace(temp, self.models / name)

    def _swap(self, rid: str) -> None:
        before = self.current_id()
        if before:
            self._point("previous", before)
        self._point("current", rid)
        if self.on_swap:
            self.on_swap(self.models / "current")

    def rollback(self, why: str) -> RolloutState:
        """Point ``current`` back at ``previous`` (after a failed run-time check of the new model)."""
        link = self.models / "previous"
        bad = self.current_id()
        if not link.is_symlink():
            state = RolloutState(bad, "failed", f"{why}; no previous model to roll back to")
        else:
            self._point("current", os.readlink(link))
            link.unlink()
            if self.on_swap:
                self.on_swap(self.models / "current")
            state = RolloutState(bad, "rolled-back", why)
        self._report(state)
        return state

    def close(self) -> None:
        if self._thread.is_alive():
            self._inbox.put(None)
            self._thread.join()
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None
