"""Shipping a trained model: its encoder, decoder and anomaly scorer in ONNX or TorchScript (`cli.py export`),
and scoring images with them without Lightning (`cli.py score`, `ExportedModel`)."""
