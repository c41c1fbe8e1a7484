"""fedquant: quantization-robust federated learning simulator."""

__version__ = "0.1.0"
