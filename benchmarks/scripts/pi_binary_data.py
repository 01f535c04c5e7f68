"""A two-class image folder from real Fashion-MNIST (sneaker / ankle boot), for the one-logit model that
`edgekit join` needs in the emulated Pi run (benchmarks/pi_emulated.sh). It checks that join works in the
device install; the classes say nothing about attentiveness, and no accuracy is reported from it.
Usage: python benchmarks/scripts/pi_binary_data.py DATA OUT [PER_CLASS]"""
import sys
from pathlib import Path

import cv2

from edgekit.core.data import load_table

data, out = sys.argv[1], Path(sys.argv[2])
per_class = int(sys.argv[3]) if len(sys.argv) > 3 else 300
table = load_table(data)
for name in ("sneaker", "ankle_boot"):
    label = next(i for i, c in enumerate(table.class_names) if c.lower().replace(" ", "_") == name)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    chosen = [i for i in table.indices("train") if table.labels[i] == label][:per_class]
    for n, index in enumerate(chosen):
        cv2.imwrite(str(folder / f"{n:04d}.png"), table.image(index))
print(f"{out}/: sneaker, ankle_boot ({per_class} Fashion-MNIST training images each)")
