"""Using trained models: load the checkpoints, predict raw photos, Grad-CAM, export to TorchScript and ONNX, serve.

Nothing here imports the training code: a model is used the same way whoever trained it."""
