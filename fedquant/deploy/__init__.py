"""Deployment: a run's global model, calibrated as the server evaluates it, as ONNX (QDQ format)
with AIMET-style encodings files (plain PyTorch core; onnx and onnxruntime are the optional
``export`` extra and are imported only by the modules that need them).

``encodings``  the quantizers' grids as integers and the encodings JSON (no onnx needed)
``onnx_export`` the graph builder (torch.fx over the model -> QuantizeLinear/DequantizeLinear)
``check``      onnxruntime sessions, logits and accuracy of an exported model
``cli``        ``python -m fedquant.export <run dir or checkpoint>``
"""
