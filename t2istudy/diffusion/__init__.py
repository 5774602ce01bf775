"""Image side: U-Net presets and text conditioning, training data, the training loop, checkpoints, sampling."""
