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

TILE_W, TILE_H, PANEL_W = 240, 180, 320


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


def compose(people: list) -> tuple[bytes, bytes, list[float]]:
    """Decode the participants' new tiles, draw both grids, encode them: (annotated JPEG, clean JPEG, arrival
    times of the tiles shown for the first time). Runs on a worker thread; ``people`` are the server's
    Participant records (name, label, score, privacy, jpeg, arrived, image, bad_tiles)."""
    import cv2

    arrived = []
    for q in people:
        jpeg, q.jpeg = q.jpeg, None
        if jpeg is not None:
            image = decode_tile(jpeg)
            if image is None:
                q.bad_tiles += 1  # the previous tile stays
            else:
                q.image = cv2.resize(image, (TILE_W, TILE_H), interpolation=cv2.INTER_AREA)
                if q.arrived is not None:
                    arrived.append(q.arrived)
    cols = max(1, math.ceil(math.sqrt(len(people))))
    rows = max(1, math.ceil(len(people) / cols))
    clean = np.zeros((rows * TILE_H, cols * TILE_W, 3), np.uint8)
    for i, q in enumerate(people):
        y, x = divmod(i, cols)
        tile = clean[y * TILE_H:(y + 1) * TILE_H, x * TILE_W:(x + 1) * TILE_W]
        if q.image is not None:
            tile[:] = q.image
        elif q.privacy:
            cv2.putText(tile, "labels only", (6, TILE_H // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (160, 160, 160), 1,
                        cv2.LINE_AA)
        cv2.putText(tile, q.name, (6, TILE_H - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    annotated = np.zeros((max(rows * TILE_H, 240), cols * TILE_W + PANEL_W, 3), np.uint8)
    annotated[:rows * TILE_H, :cols * TILE_W] = clean
    for i, q in enumerate(people):
        y, x = divmod(i, cols)
        colour = (128, 128, 128) if q.label == "waiting" else \
            (0, 200, 0) if q.label == "attentive" else (0, 0, 230)
        cv2.rectangle(annotated, (x * TILE_W + 1, y * TILE_H + 1), ((x + 1) * TILE_W - 2, (y + 1) * TILE_H - 2),
                      colour, 3)
        cv2.putText(annotated, f"{q.label} {q.score:.2f}", (x * TILE_W + 8, y * TILE_H + 22),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.55, colour, 2, cv2.LINE_AA)
    panel_x = cols * TILE_W + 10
    lines = [f"participants: {len(people)}", time.strftime("%H:%M:%S")] + \
            [f"{q.name[:14]:<14} {q.label[:13]:<13} {q.score:.2f}" for q in people[:40]]
    for j, text in enumerate(lines):
        cv2.putText(annotated, text, (panel_x, 24 + 20 * j), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                    cv2.LINE_AA)
    quality = [cv2.IMWRITE_JPEG_QUALITY, 75]
    return cv2.imencode(".jpg", annotated, quality)[1].tobytes(), cv2.imencode(".jpg", clean, quality)[1].tobytes(), \
        arrived
