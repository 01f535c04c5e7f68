"""Export to deployable formats (ONNX FP32 / QDQ INT8, OpenVINO IR) and their verification against the
PyTorch reference; see edgekit.export.core for the exporter registry."""
