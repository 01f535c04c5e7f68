"""The meeting grids: participants' tiles in a square grid, for the host with labels, scores, coloured borders
and a status panel (the annotated grid), for the participants with names only (the clean grid).

A tile is a JPEG from the network: its size is read from its header first, and a tile that would decode
to more than ``protocol.MAX_TILE_PIXELS`` is counted as bad without being decoded (the previous one stays).
"""
from __future__ import annotations

import math
import time

import numpy as np

from edgekit.edge_apps import protocol as p

TILE_W, TILE_H, PANEL_W = 240, 180, 320  # a cell of a small meeting, the host's status panel
HOST_W, HOST_H = 1280, 960  # the host's mosaic (without the panel) never grows past this; cells shrink instead
PARTICIPANT_W, PARTICIPANT_H = 640, 480  # the grid every participant receives, at most


# OpenCV decodes a JPEG at 1/2, 1/4 or 1/8 of its size in a fraction of the time: tiles larger than their
# cell are decoded at the largest reduction that still covers the cell.
REDUCED = ((8, "IMREAD_REDUCED_COLOR_8"), (4, "IMREAD_REDUCED_COLOR_4"), (2, "IMREAD_REDUCED_COLOR_2"))


def decode_tile(jpeg: bytes):
    """A participant's JPEG as a BGR image, or None when it is refused: no valid header, more pixels than
    MAX_TILE_PIXELS, or more scans than MAX_JPEG_SCANS (a progressive JPEG can repeat scans to make one small
    file decode for minutes). The cost of a decode is bounded by these checks before it starts."""
    import cv2

    size = p.jpeg_size(jpeg)
    if size is None or not 0 < size[0] * size[1] <= p.MAX_TILE_PIXELS or p.jpeg_scans(jpeg) > p.MAX_JPEG_SCANS:
        return None
    flag = cv2.IMREAD_COLOR
    for factor, name in REDUCED:
        if size[0] >= TILE_W * factor and size[1] >= TILE_H * factor:
            flag = getattr(cv2, name)
            break
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), flag)


def cell_size(count: int) -> tuple[int, int, int, int]:
    """(columns, rows, cell width, cell height) of the host's grid: square-ish, cells of TILE_W x TILE_H until
    the grid would pass HOST_W x HOST_H, smaller (same 4:3) beyond."""
    cols = max(1, math.ceil(math.sqrt(count)))
    rows = max(1, math.ceil(count / cols))
    scale = min(1.0, HOST_W / (cols * TILE_W), HOST_H / (rows * TILE_H))
    return cols, rows, max(16, int(TILE_W * scale)), max(12, int(TILE_H * scale))


def compose(people: list) -> tuple[bytes, bytes, list[float]]:
    """Decode the participants' new tiles, draw both grids, encode them: (annotated JPEG for the host, clean
    JPEG for the participants, arrival times of the tiles shown for the first time). Runs on a worker thread;
    ``people`` are the server's Participant records (name, label, score, privacy, jpeg, arrived, image,
    bad_tiles). Each tile is decoded once, when it arrives, and kept at its cell size; the participants' grid
    is the host's mosaic scaled to fit PARTICIPANT_W x PARTICIPANT_H, so what every participant receives has a
    bounded size however many join (the traffic grows with the participants, not with their square)."""
    import cv2

    cols, rows, cell_w, cell_h = cell_size(len(people))
    arrived = []
    for q in people:
        jpeg, q.jpeg = q.jpeg, None
        if jpeg is not None:
            image = decode_tile(jpeg)
            if image is None:
                q.bad_tiles += 1  # the previous tile stays
            else:
                q.image = cv2.resize(image, (cell_w, cell_h), interpolation=cv2.INTER_AREA)
                if q.arrived is not None:
                    arrived.append(q.arrived)
        if q.image is not None and q.image.shape[:2] != (cell_h, cell_w):  # the grid was re-laid out
            q.image = cv2.resize(q.image, (cell_w, cell_h), interpolation=cv2.INTER_AREA)
    font = 0.5 * min(1.0, cell_w / TILE_W)
    clean = np.zeros((rows * cell_h, cols * cell_w, 3), np.uint8)
    for i, q in enumerate(people):
        y, x = divmod(i, cols)
        tile = clean[y * cell_h:(y + 1) * cell_h, x * cell_w:(x + 1) * cell_w]
        if q.image is not None:
            tile[:] = q.image
        elif q.privacy:
            cv2.putText(tile, "labels only", (6, cell_h // 2), cv2.FONT_HERSHEY_SIMPLEX, font, (160, 160, 160), 1,
                        cv2.LINE_AA)
        cv2.putText(tile, q.name, (4, cell_h - 6), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), 1, cv2.LINE_AA)
    annotated = np.zeros((max(rows * cell_h, 240), cols * cell_w + PANEL_W, 3), np.uint8)
    annotated[:rows * cell_h, :cols * cell_w] = clean
    for i, q in enumerate(people):
        y, x = divmod(i, cols)
        colour = (128, 128, 128) if q.label == "waiting" else \
            (0, 200, 0) if q.label == "attentive" else (0, 0, 230)
        cv2.rectangle(annotated, (x * cell_w + 1, y * cell_h + 1), ((x + 1) * cell_w - 2, (y + 1) * cell_h - 2),
                      colour, 2 if cell_w < TILE_W else 3)
        cv2.putText(annotated, f"{q.label} {q.score:.2f}", (x * cell_w + 6, y * cell_h + int(22 * font / 0.5)),
                    cv2.FONT_HERSHEY_SIMPLEX, font * 1.1, colour, 1 if cell_w < TILE_W else 2, cv2.LINE_AA)
    panel_x = cols * cell_w + 10
    lines = [f"participants: {len(people)}", time.strftime("%H:%M:%S")] + \
            [f"{q.name[:14]:<14} {q.label[:13]:<13} {q.score:.2f}" for q in people[:40]]
    for j, text in enumerate(lines):
        cv2.putText(annotated, text, (panel_x, 24 + 20 * j), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                    cv2.LINE_AA)
    scale = min(1.0, PARTICIPANT_W / clean.shape[1], PARTICIPANT_H / clean.shape[0])
    if scale < 1.0:
        clean = cv2.resize(clean, (max(1, int(clean.shape[1] * scale)), max(1, int(clean.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
    quality = [cv2.IMWRITE_JPEG_QUALITY, 75]
    return cv2.imencode(".jpg", annotated, quality)[1].tobytes(), cv2.imencode(".jpg", clean, quality)[1].tobytes(), \
        arrived
