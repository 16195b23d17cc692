"""Text-conditioned latent diffusion: denoising UNet, text encoder, schedules and samplers."""
