"""Training: the training loop and the recipes that make new checkpoints (PyTorch INT8 quantization,
the demo). Data, metrics and calibration are in edgekit.core, the checkpoint format in edgekit.models."""
