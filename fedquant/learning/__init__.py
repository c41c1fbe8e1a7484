"""Learning loops: local (quantization-aware) training on a client and the server's test of the
global model at every setting (plain PyTorch)."""
