"""Runtimes: one interface over PyTorch, ONNX Runtime and OpenVINO; see the runtimes issue. Nothing here yet."""
