"""Flower ClientApps for quantization-robust federated learning."""

from .app import ClientSetup, handle_train, make_client_app

__all__ = ["ClientSetup", "handle_train", "make_client_app"]
