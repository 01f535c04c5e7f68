"""The foundation layer: what every other layer may use and what a device that only runs models needs.

The model spec, the error family, CPU facts, artifact and sidecar I/O, data tables and their split
recipe, metrics and the calibration iterator. Numpy and OpenCV only: nothing here imports torch,
onnxruntime or openvino, and nothing here imports another edgekit layer (docs/architecture.md).
"""
