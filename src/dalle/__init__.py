"""dalle: a complete, fast, practical DALL-E (Ramesh et al. 2021) in PyTorch."""

__version__ = "0.1.0"
