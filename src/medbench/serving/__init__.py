"""Using a trained model: prediction on new images and volumes, and export to TorchScript and ONNX."""
