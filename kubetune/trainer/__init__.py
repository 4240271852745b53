"""The training program the PyTorchJob pods run (`python -m kubetune.trainer --config FILE`)."""
