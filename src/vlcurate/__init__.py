"""vlcurate: verified, high-quality vision-language training data."""

__version__ = "0.1.0"
