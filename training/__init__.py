"""Training: data sets, model registry, training loop, metrics and PyTorch INT8 quantization."""
