"""Inputs of the emulated Pi run (benchmarks/pi_emulated.sh): the first 48 frames of a video as clip.avi and
the first 200 Fashion-MNIST test images as PNG files in images/.
Usage: python benchmarks/scripts/pi_inputs.py VIDEO DATA BUNDLE"""
import sys
from pathlib import Path

import cv2

from edgekit.core.data import load_table

video_path, data, bundle = sys.argv[1], sys.argv[2], Path(sys.argv[3])
video = cv2.VideoCapture(video_path)
writer = None
for _ in range(48):
    ok, image = video.read()
    if writer is None:
        writer = cv2.VideoWriter(str(bundle / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 24, image.shape[1::-1])
    writer.write(image)
writer.release()
table = load_table(data)
(bundle / "images").mkdir(exist_ok=True)
for i, index in enumerate(table.indices("test")[:200]):
    cv2.imwrite(str(bundle / "images" / f"{i:03d}.png"), table.image(index))
print(f"{bundle}/clip.avi (48 frames), {bundle}/images/ (200 test images)")
