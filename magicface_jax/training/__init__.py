"""Training: MagicFace and the synthetic world's VAE."""
