"""vae component."""
