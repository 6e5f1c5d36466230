"""SigDL: train, compress, retest on emulated embedded targets, deploy to the edge, and back."""

__version__ = "0.1.0"
