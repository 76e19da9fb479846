"""vae-bench: run, track, tune and report VAE variants on MNIST."""

__version__ = "0.1.0"
