"""The camera and meeting subcommands (run, serve, join, dataset, doctor): thin wrappers that build a
config, call the library and print. The model commands are in edgekit.commands."""
from __future__ import annotations

from pathlib import Path

import click

from edgekit.edge_apps.apps import APPS
from edgekit.group import cli, ctrl_c_interrupts
from edgekit.core import checks, jsonio


def fleet_options(command):
    """--fleet, --fleet-ca, --fleet-interval, --device-id: telemetry to an MQTT broker (edge_apps/fleet.py)."""
    options = [
        click.option("--fleet", default=None, metavar="URL",
                     help="Publish telemetry to mqtt[s]://[user@]host[:port]/prefix (password: "
                     "$EDGEKIT_FLEET_PASSWORD). Needs edgekit[fleet]."),
        click.option("--fleet-ca", default=None, type=click.Path(), help="CA file of an mqtts:// broker."),
        click.option("--fleet-interval", default=5.0, show_default=True, help="Seconds between telemetry messages."),
        click.option("--device-id", default=None, help="This device's name in the fleet (default: the host name)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@cli.command("run")
@click.option("--model", required=True, type=click.Path(), help="A .pt checkpoint, .onnx or OpenVINO .xml.")
@click.option("--runtime", default=None, help="pytorch, onnxruntime or openvino (default: the file's natural one).")
@click.option("--source", default="0", show_default=True,
              help="Camera index, video file, image folder, stream URL (rtsp://, http://) or picamera2[:N] (a "
                   "Raspberry Pi camera module through libcamera's Picamera2).")
@click.option("--app", type=click.Choice(sorted(APPS)), default="classify", show_default=True,
              help="classify: whole frame (or face with --faces); attend: largest face -> binary attentiveness "
                   "averaged over --window frames; driver: 10-class distraction + eye-closure drowsiness alerts; clip: a clip "
                   "model on the last frames (activity recognition).")
@click.option("--faces", default=None, help="Face detector: haar, none or a cascade .xml "
              "(default: haar for attend/driver, none for classify).")
@click.option("--out", default="runs/run", show_default=True,
              help="Folder for events.jsonl, summary.json and (with --save-video) annotated.avi.")
@click.option("--save-video/--no-save-video", default=True, show_default=True, help="Write the annotated video.")
@click.option("--serve", default=None, metavar="HOST:PORT",
              help="Stream the annotated video as MJPEG over HTTP (:8080 = this machine only; 0.0.0.0:8080 = the "
                   "network); viewers need the viewer token.")
@click.option("--viewer-token", envvar="EDGEKIT_VIEWER_TOKEN", default=None,
              help="What viewers of the HTTP stream must present (login form or 'Authorization: Bearer'); "
                   "or $EDGEKIT_VIEWER_TOKEN; a random one is made and printed when not given.")
@click.option("--show", is_flag=True, help="Show a window (needs a display and OpenCV with GUI; q quits).")
@click.option("--smooth", default="window:5", show_default=True, help="window:N, ema:ALPHA or none.")
@click.option("--hold", default=3, show_default=True, help="Frames a new label must stay on top before it is reported.")
@click.option("--every", default=1, show_default=True, help="Run the model on every k-th frame only.")
@click.option("--motion-gate", default=0.0, show_default=True,
              help="Reuse the last result while the picture changes less than this (mean grey levels, 0-255; 0 = off).")
@click.option("--scale", default=1.0, show_default=True, help="Resize frames by this factor before anything else.")
@click.option("--reduced-decode/--full-decode", default=True, show_default=True,
              help="Decode MJPEG videos at 1/2, 1/4 or 1/8 size when the whole-frame model needs no more (frames "
                   "that are shown stay at least 640x360).")
@click.option("--window", default=5, show_default=True, help="attend: frames averaged per decision.")
@click.option("--positive", default=None,
              help="attend: the attentive label (default: the model's recorded positive label).")
@click.option("--safe-label", default=None, help="driver: the safe-driving label (default: c0 or a label with 'safe').")
@click.option("--alert-after", default=2.0, show_default=True, help="driver: seconds of distraction before an alert.")
@click.option("--perclos-seconds", default=30.0, show_default=True, help="driver: PERCLOS window in seconds.")
@click.option("--perclos-threshold", default=0.3, show_default=True,
              help="driver: share of closed-eye frames in the window that raises the drowsiness alert.")
@click.option("--clip-every", default=1, show_default=True,
              help="clip: a decision every N frames taken into the clip (the model's frame stride applies first).")
@click.option("--realtime", is_flag=True,
              help="Play a video file or folder at its frame rate, like a camera (the newest frame wins).")
@click.option("--loop", is_flag=True, help="Restart a video file or folder at its end (until Ctrl-C or --max-frames).")
@click.option("--reconnect", default=5, show_default=True, help="URL sources: re-open attempts (with backoff) after a drop.")
@click.option("--max-frames", default=0, show_default=True, help="Stop after N frames (0 = until the source ends).")
@click.option("--threads", default=2, show_default=True, help="Inference threads.")
@fleet_options
def run_cmd(model: str, runtime: str | None, source: str, app: str, faces: str | None, out: str, save_video: bool,
            serve: str | None, viewer_token: str | None, show: bool, realtime: bool, loop: bool, reconnect: int, threads: int, every: int,
            max_frames: int, motion_gate: float, scale: float, reduced_decode: bool, fleet: str | None,
            fleet_ca: str | None, fleet_interval: float, device_id: str | None, **settings) -> None:
    """Classify frames from a camera, video, folder or URL in real time with any runtime.

    Prints a per-stage latency summary at the end (Ctrl-C ends early; files written so far are kept).
    """
    ctrl_c_interrupts()
    from edgekit.edge_apps.apps import AppSettings
    from edgekit.edge_apps.camera import RunConfig, run_camera
    from edgekit.edge_apps.pipeline import PipelineConfig, format_summary

    cfg = RunConfig(model=model, runtime=runtime, source=source, app=app, faces=faces, out=out, save_video=save_video,
                    serve=serve, viewer_token=viewer_token, show=show, realtime=realtime, loop=loop, reconnect=reconnect, threads=threads,
                    pipeline=PipelineConfig(every=every, max_frames=max_frames, motion_gate=motion_gate, scale=scale,
                                            reduced_decode=reduced_decode),
                    settings=AppSettings(**settings), fleet=fleet, fleet_ca=fleet_ca, fleet_interval=fleet_interval,
                    device_id=device_id)
    summary = run_camera(cfg, say=lambda line: click.echo(line, err=True))
    if summary.get("interrupted"):
        click.echo("interrupted", err=True)
    click.echo(format_summary(summary))
    click.echo("wrote " + ", ".join(summary["written"]), err=True)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface for participants (0.0.0.0: every interface, for participants on other machines).")
@click.option("--port", default=7700, show_default=True, help="TCP port for participants (0 = any free port).")
@click.option("--http", default=":8080", show_default=True, metavar="HOST:PORT",
              help="Dashboard (annotated grid as MJPEG, status panel, /status.json; HTTPS with --tls-cert; "
                   ":8080 = this machine only); 'off' to disable.")
@click.option("--viewer-token", envvar="EDGEKIT_VIEWER_TOKEN", default=None,
              help="What viewers of the HTTP stream must present (login form or 'Authorization: Bearer'); "
                   "or $EDGEKIT_VIEWER_TOKEN; a random one is made and printed when not given.")
@click.option("--token", envvar="EDGEKIT_TOKEN", default="",
              help="Shared join token (or $EDGEKIT_TOKEN); a random one is made and printed when empty.")
@click.option("--fps", default=10.0, show_default=True, help="Grids per second.")
@click.option("--timeout", default=6.0, show_default=True, help="Seconds of silence before a participant is dropped.")
@click.option("--max-clients", default=64, show_default=True)
@click.option("--max-message-kb", default=2048, show_default=True, help="Largest accepted message (a tile).")
@click.option("--tls-cert", default=None, type=click.Path(), help="PEM certificate: participants connect with TLS.")
@click.option("--tls-key", default=None, type=click.Path(), help="PEM private key for --tls-cert.")
@click.option("--duration", default=0.0, show_default=True, help="Stop after N seconds (0 = until Ctrl-C).")
@click.option("--json", "json_path", default=None, help="Write the final status here at exit.")
def serve(host: str, port: int, http: str, viewer_token: str | None, token: str, fps: float, timeout: float, max_clients: int,
          max_message_kb: int, tls_cert: str | None, tls_key: str | None, duration: float,
          json_path: str | None) -> None:
    """EdgeAttend server: participants `edgekit join`, the host watches the annotated grid in a browser."""
    ctrl_c_interrupts()
    import asyncio

    from edgekit.core.checks import writable_file
    from edgekit.edge_apps.meeting_server import MeetingServer, ServerConfig

    writable_file("--json", json_path)

    server = MeetingServer(ServerConfig(host=host, port=port, http=None if http == "off" else http, token=token,
                                        viewer_token=viewer_token or "",
                                        fps=fps, timeout=timeout, max_clients=max_clients,
                                        max_message=max_message_kb * 1024, tls_cert=tls_cert, tls_key=tls_key,
                                        duration=duration))

    def ready(s: MeetingServer) -> None:
        click.echo(f"meeting on {host}:{s.port}{' (TLS)' if tls_cert else ''}"
                   + (f", dashboard {s.http.url}" if s.http else "")
                   + ("" if token else f", join token {s.token}")
                   + (f", viewer token {s.http.token}" if s.http and s.http.generated_token else ""), err=True)
        click.echo(f"participants: edgekit join --server HOST:{s.port} --name NAME --token TOKEN --model M.onnx",
                   err=True)

    try:
        asyncio.run(server.serve(ready))
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    status = server.status()
    if json_path:
        jsonio.write(json_path, status, indent=2)
    lat = status["latency_ms"]
    click.echo(f"{server.grids} grids, {server.joins_and_leaves} joins/leaves, {server.rejected} connections refused"
               + (f", frame-to-grid p50 {lat['p50']:.1f} ms p99 {lat['p99']:.1f} ms" if lat else ""))


@cli.command()
@click.option("--server", required=True, metavar="HOST:PORT", help="The `edgekit serve` address.")
@click.option("--name", required=True, help="Your name on the grid.")
@click.option("--token", envvar="EDGEKIT_TOKEN", default="", help="The meeting's join token (or $EDGEKIT_TOKEN).")
@click.option("--model", required=True, type=click.Path(), help="Binary attentiveness model (.onnx, .xml or .pt).")
@click.option("--runtime", default=None, help="pytorch, onnxruntime or openvino (default: the file's natural one).")
@click.option("--source", default="0", show_default=True, help="Camera index, video file, URL or picamera2[:N].")
@click.option("--loop", is_flag=True, help="Restart a video file at its end (a file standing in for a camera).")
@click.option("--faces", default="haar", show_default=True, help="Face detector: haar or a cascade .xml.")
@click.option("--window", default=5, show_default=True, help="Frames averaged per decision.")
@click.option("--privacy", is_flag=True, help="Send labels only, never video.")
@click.option("--tls", is_flag=True, help="Connect with TLS.")
@click.option("--tls-ca", default=None, type=click.Path(), help="CA file that signed the server's certificate.")
@click.option("--fps", default=10.0, show_default=True, help="Tiles per second at most.")
@click.option("--duration", default=0.0, show_default=True, help="Leave after N seconds (0 = until Ctrl-C).")
@click.option("--full-wait", default=60.0, show_default=True,
              help="'Meeting full': keep retrying this many seconds, then give up with exit 1.")
@click.option("--out", default="runs/join", show_default=True, help="Folder for summary.json and the last grid.jpg.")
@click.option("--serve", default=None, metavar="HOST:PORT",
              help="Show the shared grid as MJPEG on this address (:8081 = this machine only).")
@click.option("--viewer-token", envvar="EDGEKIT_VIEWER_TOKEN", default=None,
              help="What viewers of the HTTP stream must present (login form or 'Authorization: Bearer'); "
                   "or $EDGEKIT_VIEWER_TOKEN; a random one is made and printed when not given.")
@click.option("--show", is_flag=True, help="Show the shared grid in a window (needs a display and OpenCV with GUI).")
@click.option("--threads", default=2, show_default=True)
@fleet_options
def join(server: str, name: str, token: str, model: str, runtime: str | None, source: str, loop: bool, faces: str,
         window: int, privacy: bool, tls: bool, tls_ca: str | None, fps: float, duration: float, full_wait: float,
         out: str, serve: str | None, viewer_token: str | None, show: bool, threads: int, fleet: str | None,
         fleet_ca: str | None, fleet_interval: float, device_id: str | None) -> None:
    """Join an EdgeAttend meeting: attentiveness is computed here; only a tile and the label are sent."""
    ctrl_c_interrupts()
    from edgekit.edge_apps.apps import AppSettings, Timer, build_app
    from edgekit.edge_apps.faces import load_detector
    from edgekit.edge_apps.join import JoinConfig, run_join, write_summary
    from edgekit.edge_apps.meeting_client import MeetingClient
    from edgekit.runtimes import RuntimeOptions, load_runtime

    config = JoinConfig(source=source, fps=fps, duration=duration, loop=loop, full_wait=full_wait)
    target = None
    if fleet:  # checked before the model loads
        from edgekit.edge_apps.fleet import FleetTarget, check_name

        target = FleetTarget.parse(fleet, fleet_ca)
        checks.within("--fleet-interval", fleet_interval, 0.05, 3600)
        if device_id is not None:
            check_name("--device-id", device_id)
    settings = AppSettings(window=window)
    client = MeetingClient(server, name, token, privacy=privacy, tls=tls, tls_ca=tls_ca)
    rt = load_runtime(model, runtime, RuntimeOptions(threads=threads))
    timer = Timer()
    app = build_app("attend", rt, timer, load_detector(faces), settings)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    viewers = []
    if show:
        from edgekit.edge_apps.pipeline import WindowSink

        viewers.append(WindowSink(f"edgekit meeting: {name}"))
    if serve:
        from edgekit.edge_apps.stream import MjpegServer

        viewers.append(MjpegServer(serve, title=f"edgekit meeting: {name}", token=viewer_token))
        click.echo(f"shared grid on {viewers[-1].url}"
                   + (f" (viewer token {viewers[-1].token})" if viewers[-1].generated_token else ""), err=True)
    publisher, live = None, {}
    if target is not None:
        publisher = start_join_telemetry(target, fleet_interval, device_id, model, rt.name, timer, live)
    try:
        result = run_join(client, app, config, folder, viewers, live)
    except KeyboardInterrupt:
        result = {"interrupted": True, "grids_received": client.grids, "connects": client.connects}
    finally:
        if publisher is not None:
            publisher.close()
        rt.close()
        for viewer in viewers:
            viewer.close()
    write_summary(folder, result)
    click.echo(jsonio.dumps(result))
    if not result.get("connects") and not result.get("interrupted"):
        from edgekit.core.errors import EdgekitError

        raise EdgekitError(f"never got into the meeting at {server}: {result.get('last_error') or 'no answer'}")


@cli.group()
def dataset() -> None:
    """Prepare training data for the camera apps."""


@dataset.command("faces")
@click.argument("videos", type=click.Path())
@click.option("--labels", required=True, type=click.Path(), help="CSV with a clip column and a 0-3 level column.")
@click.option("--out", required=True, type=click.Path(), help="Output folder: <label>/*.jpg and faces.csv.")
@click.option("--column", default="Engagement", show_default=True, help="The level column.")
@click.option("--clip-column", default="ClipID", show_default=True, help="The clip file name column.")
@click.option("--threshold", default=2, show_default=True, help="Level >= threshold is 'attentive'.")
@click.option("--fps", default=1.0, show_default=True, help="Frames sampled per second of video.")
@click.option("--size", default=112, show_default=True, help="Crop side in pixels.")
@click.option("--person-level", default=2, show_default=True,
              help="The person is the folder this many levels above the video (DAiSEE: 2).")
def dataset_faces(**options) -> None:
    """Face crops from labelled clips (DAiSEE layout), grouped by person for `edgekit train --group-column person`."""
    from tqdm import tqdm

    from edgekit.edge_apps.dataset import FaceDatasetConfig, build_face_dataset

    cfg = FaceDatasetConfig(**options)
    ctrl_c_interrupts()  # staged output: Ctrl-C removes the half-made crops (see build_face_dataset)
    report = build_face_dataset(cfg, lambda videos: tqdm(videos, desc="clips", unit="clip"))
    click.echo(f"{report.clips} clips, {report.frames} frames sampled, {report.faces} faces from "
               f"{len(report.persons)} persons: " + ", ".join(f"{k} {v}" for k, v in sorted(report.per_label.items())))
    for what, paths in (("without a label (skipped)", report.unlabelled), ("unreadable (skipped)", report.unreadable)):
        if paths:
            click.echo(f"{len(paths)} clips {what}, e.g. {paths[0]}", err=True)
    click.echo(f"next: edgekit train --data {Path(cfg.out) / 'faces.csv'} --group-column person --binary", err=True)


@dataset.command("clips")
@click.option("--out", required=True, type=click.Path(), help="Output folder (new or empty): <motion>/*.avi and segments.csv.")
@click.option("--source", default="", help="IDX folder of the images that move (default: the embedded Fashion-MNIST "
              "subset; e.g. /usr/share/datasets/fashion-mnist for all 60,000).")
@click.option("--per-class", default=100, show_default=True, help="Videos per motion (8 motions).")
@click.option("--frames", default=16, show_default=True, help="Frames per video.")
@click.option("--size", default=64, show_default=True, help="Frame side in pixels.")
@click.option("--clips-per-object", default=2, show_default=True, help="Videos per source image (its subject id).")
@click.option("--fps", default=15.0, show_default=True, help="Frame rate written into the videos.")
@click.option("--seed", default=0, show_default=True)
def dataset_clips(**options) -> None:
    """The temporal benchmark: videos of a real image moving (right, left, down, up, rotating either way, zooming
    in or out); the label is the motion, so a single frame cannot tell it. Train clip models on the result."""
    from tqdm import tqdm

    from edgekit.edge_apps.motion import MotionClipsConfig, build_motion_clips

    cfg = MotionClipsConfig(**options)
    ctrl_c_interrupts()  # staged output: Ctrl-C leaves nothing half-written
    summary = build_motion_clips(cfg, lambda jobs: tqdm(jobs, desc="videos", unit="video"))
    click.echo(f"{summary['videos']} videos of {summary['frames']} frames ({summary['size']}x{summary['size']}), "
               f"{summary['objects']} objects from {summary['source']}, motions: {', '.join(summary['motions'])}")
    click.echo(f"next: edgekit train --data {Path(cfg.out) / 'segments.csv'} --model mobilenet3d_x0_5 "
               f"--imgsz {cfg.size} --clip-frames 8 --frame-stride 2", err=True)


@cli.command()
@click.argument("model", required=False, type=click.Path())
@click.option("--runtime", default=None, help="Runtime to try the model with (default: the file's natural one).")
@click.option("--camera", default=0, show_default=True, help="Camera index to probe.")
@click.option("--json", "json_path", default=None, help="Also write the checks as JSON.")
@click.option("--fleet", default=None, metavar="URL",
              help="Also publish the checks once to mqtt[s]://[user@]host[:port]/prefix ($EDGEKIT_FLEET_PASSWORD).")
@click.option("--fleet-ca", default=None, type=click.Path(), help="CA file of an mqtts:// broker.")
@click.option("--device-id", default=None, help="This device's name in the fleet (default: the host name).")
def doctor(model: str | None, runtime: str | None, camera: int, json_path: str | None, fleet: str | None,
           fleet_ca: str | None, device_id: str | None) -> None:
    """Check this machine (and optionally MODEL): OS, CPU and what it means for INT8, runtimes, memory,
    camera, and whether the model loads and runs. Exit 1 when a check fails."""
    import time

    from edgekit.core.checks import writable_file
    from edgekit.doctor import format_checks, run_checks, to_json

    writable_file("--json", json_path)
    target = None
    if fleet:
        from edgekit.edge_apps.fleet import FleetTarget, check_name, default_device_id, publish_report

        target, device = FleetTarget.parse(fleet, fleet_ca), check_name("--device-id", device_id or default_device_id())
    checks = run_checks(model, runtime, camera)
    click.echo(format_checks(checks))
    if json_path:
        jsonio.write(json_path, to_json(checks), indent=2)
    if target is not None:
        publish_report(target, device, {"time": round(time.time(), 3), "checks": to_json(checks)})
        click.echo(f"published to {target} as {device}", err=True)
    if any(c.status == "fail" for c in checks):
        raise click.exceptions.Exit(1)


def start_join_telemetry(target, interval: float, device_id: str | None, model: str, runtime: str, timer,
                         live: dict):
    """`join --fleet`: telemetry from the meeting client's loop (frames, tiles sent, label, inference p50/p90)."""
    import time

    from edgekit.core.spec import sha256_file
    from edgekit.edge_apps.fleet import TelemetryPublisher, default_device_id
    from edgekit.edge_apps.pipeline import recent_stages

    info = {"name": Path(model).name, "sha256": sha256_file(model)[:16], "runtime": runtime}
    marks = {"t": time.perf_counter(), "frames": 0}

    def collect() -> dict:
        now, frames = time.perf_counter(), live.get("frames", 0)
        fps = (frames - marks["frames"]) / max(1e-9, now - marks["t"])
        marks["t"], marks["frames"] = now, frames
        return {"model": info, "app": "join", "fps": round(fps, 2), "stages": recent_stages(timer.times),
                **live}

    publisher = TelemetryPublisher(target, device_id or default_device_id(), collect, interval).start()
    click.echo(f"fleet telemetry every {interval:g} s to {target} as {publisher.device}", err=True)
    return publisher


def wait_for(duration: float) -> None:
    """Block for ``duration`` seconds (0: until Ctrl-C, which raises KeyboardInterrupt as usual)."""
    import time

    deadline = time.monotonic() + duration if duration else None
    while deadline is None or time.monotonic() < deadline:
        time.sleep(0.2)


@cli.group("fleet")
def fleet_group() -> None:
    """Devices that publish telemetry over MQTT (`run --fleet URL`): see how they are doing."""


@fleet_group.command("status")
@click.option("--broker", "url", required=True, metavar="URL", help="mqtt[s]://[user@]host[:port]/prefix of the fleet.")
@click.option("--fleet-ca", default=None, type=click.Path(), help="CA file of an mqtts:// broker.")
@click.option("--wait", default=1.5, show_default=True, help="Seconds to listen (retained states arrive at once).")
@click.option("--json", "as_json", is_flag=True, help="Print the devices as JSON instead of a table.")
@click.option("--serve", default=None, metavar="HOST:PORT",
              help="Instead, serve the table as a live web page (127.0.0.1 unless a host is given) until Ctrl-C.")
@click.option("--viewer-token", envvar="EDGEKIT_VIEWER_TOKEN", default=None,
              help="--serve: what a browser must enter (or $EDGEKIT_VIEWER_TOKEN); a random one is printed if not given.")
@click.option("--duration", default=0.0, show_default=True, help="--serve: stop after N seconds (0 = until Ctrl-C).")
def fleet_status(url: str, fleet_ca: str | None, wait: float, as_json: bool, serve: str | None,
                 viewer_token: str | None, duration: float) -> None:
    """One row per device: online or not, model and hash, FPS, inference p50, RSS, temperature, last seen."""
    import json

    from edgekit.edge_apps.fleet import FLEET_PAGE, FleetTarget, FleetView, format_fleet, read_fleet

    target = FleetTarget.parse(url, fleet_ca)
    if not serve:
        rows = read_fleet(target, wait)
        click.echo(json.dumps(rows, indent=2, default=str) if as_json else format_fleet(rows))
        return
    from edgekit.edge_apps.stream import MjpegServer

    ctrl_c_interrupts()
    checks.within("--duration", duration, 0, 10**7)
    view = FleetView(target).start()
    server = None
    try:
        server = MjpegServer(serve, title=f"edgekit fleet {target.prefix}", token=viewer_token, page=FLEET_PAGE,
                             status_source=lambda: {"devices": view.rows()})
        click.echo(f"fleet page on {server.url}" + (f" (viewer token {server.token})" if server.generated_token
                                                     else ""), err=True)
        wait_for(duration)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.close()
        view.close()
    click.echo(format_fleet(view.rows()))


@fleet_group.command("keygen")
@click.argument("key", type=click.Path())
def fleet_keygen(key: str) -> None:
    """Make an Ed25519 key pair: KEY (private, 0600, for `fleet publish`) and KEY.pub (for devices' --trust)."""
    from edgekit.edge_apps.rollout import keygen

    private, public = keygen(Path(key))
    click.echo(f"private key {private} (keep it on the publishing machine); public key {public} (give it to devices)")


@fleet_group.command("publish")
@click.argument("folder", type=click.Path())
@click.option("--broker", "url", required=True, metavar="URL", help="mqtt[s]://[user@]host[:port]/prefix of the fleet.")
@click.option("--fleet-ca", default=None, type=click.Path(), help="CA file of an mqtts:// broker.")
@click.option("--to", "group", required=True, help="The device group (devices run `fleet agent --group GROUP`).")
@click.option("--key", required=True, type=click.Path(), help="The Ed25519 private key (`edgekit fleet keygen`).")
@click.option("--percent", default=100.0, show_default=True, help="Share of the group that takes this model.")
@click.option("--model", "model", default=None, help="The model file inside FOLDER (default: its only .onnx).")
@click.option("--serve", default="127.0.0.1:0", show_default=True, metavar="HOST:PORT",
              help="Where the files are served from while devices download them.")
@click.option("--duration", default=0.0, show_default=True, help="Serve for N seconds, then stop (0 = until Ctrl-C).")
def fleet_publish(folder: str, url: str, fleet_ca: str | None, group: str, key: str, percent: float, model: str | None,
                  serve: str, duration: float) -> None:
    """Announce the model in FOLDER to a device group, signed, and serve its files until stopped."""

    from edgekit.edge_apps.fleet import FleetTarget
    from edgekit.edge_apps.rollout import BundleServer, announce, build_manifest, sign

    ctrl_c_interrupts()
    target = FleetTarget.parse(url, fleet_ca)
    checks.within("--percent", percent, 0, 100, low_open=True)
    checks.within("--duration", duration, 0, 10**7)
    manifest = build_manifest(Path(folder), model)
    signature = sign(manifest, key)
    server = BundleServer(Path(folder), list(manifest["files"]), serve)
    try:
        message = announce(target, group, manifest, signature, server.url, percent)
        click.echo(f"rollout {message['id']} of {manifest['model']} to {percent:g}% of {group}; serving "
                   f"{len(manifest['files'])} files on {server.url.split('/', 3)[2]}", err=True)
        wait_for(duration)
    except KeyboardInterrupt:
        click.echo("stopped serving", err=True)
    finally:
        server.close()
    click.echo(message["id"])


@fleet_group.command("agent")
@click.option("--broker", "url", required=True, metavar="URL", help="mqtt[s]://[user@]host[:port]/prefix of the fleet.")
@click.option("--fleet-ca", default=None, type=click.Path(), help="CA file of an mqtts:// broker.")
@click.option("--group", required=True, help="The group whose rollouts this device takes.")
@click.option("--trust", required=True, type=click.Path(), help="The publisher's public key (KEY.pub).")
@click.option("--dir", "models", default="models", show_default=True, type=click.Path(),
              help="Where models go; MODELS/current points at the active one (run --model MODELS/current/...).")
@click.option("--device-id", default=None, help="This device's name in the fleet (default: the host name).")
@click.option("--interval", default=5.0, show_default=True, help="Seconds between telemetry messages.")
@click.option("--probation", default=0.0, show_default=True,
              help="After a switch, roll back unless `edgekit run --fleet` on this device (same --device-id) "
              "reports the new model running within N seconds (0 = no run-time check).")
@click.option("--duration", default=0.0, show_default=True, help="Stop after N seconds (0 = until Ctrl-C).")
def fleet_agent(url: str, fleet_ca: str | None, group: str, trust: str, models: str, device_id: str | None,
                interval: float, probation: float, duration: float) -> None:
    """The device side of rollouts: verify, download, health-check and switch models; report state."""

    from edgekit.core.spec import sha256_file
    from edgekit.edge_apps.fleet import FleetTarget, TelemetryPublisher, default_device_id
    from edgekit.edge_apps.rollout import RolloutAgent

    ctrl_c_interrupts()
    target = FleetTarget.parse(url, fleet_ca)
    checks.within("--duration", duration, 0, 10**7)
    device = device_id or default_device_id()
    def doctor_verdict(model: Path) -> None:  # the device checks of `edgekit doctor MODEL`, no camera probe
        from edgekit.core.errors import BadInputError
        from edgekit.doctor import run_checks

        failed = [c for c in run_checks(str(model), camera=None) if c.status == "fail"]
        if failed:
            raise BadInputError("doctor: " + "; ".join(f"{c.name}: {c.detail}" for c in failed))

    agent = RolloutAgent(target, group, trust, Path(models), device, probation=probation, extra_check=doctor_verdict)
    hashes: dict[str, str] = {}

    def collect() -> dict:
        current = agent.models / "current"
        model = None
        if current.is_dir():
            onnx = sorted(current.glob("*.onnx"))
            if onnx:
                real = str(onnx[0].resolve())
                hashes.setdefault(real, sha256_file(real)[:16])
                model = {"name": onnx[0].name, "sha256": hashes[real], "rollout": agent.current_id()}
        return {"app": "agent", "model": model, "rollout": vars(agent.state)}

    publisher = TelemetryPublisher(target, device, collect, interval, kind="agent").start()
    agent.start()
    click.echo(f"agent {device} on {target} group {group}; models in {models}", err=True)
    try:
        wait_for(duration)
    except KeyboardInterrupt:
        pass
    finally:
        agent.close()
        publisher.close()
