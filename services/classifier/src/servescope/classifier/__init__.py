"""The classifier: an Open Inference Protocol v2 (REST) server for one ONNX model."""
