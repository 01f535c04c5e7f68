"""Export to deployable formats (ONNX, OpenVINO IR); see the export issue. Nothing here yet."""
