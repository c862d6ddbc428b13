"""Flax (linen) building blocks of the Stable Diffusion UNet and VAE, NHWC throughout."""
