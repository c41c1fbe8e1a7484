"""Flower ClientApps for quantization-robust federated learning."""

from .app import ClientSetup, handle_query, handle_train, make_client_app, node_partition

__all__ = ["ClientSetup", "handle_query", "handle_train", "make_client_app", "node_partition"]
