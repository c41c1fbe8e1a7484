"""Deployment: a run's global model, calibrated as the server evaluates it, as ONNX (QDQ format)
with AIMET-style encodings files (plain PyTorch core; onnx and onnxruntime are the optional
``export`` extra and are imported only by the modules that need them).

``encodings``   the quantizers' grids as integers and the encodings JSON (no onnx needed)
``onnx_export`` :func:`~fedquant.export.onnx_export.export_model`: torch.fx over the model -> ONNX
``builder``     the graph under construction and its primitives
``qdq``         QuantizeLinear/DequantizeLinear: quantized inputs, integer weights
``batchnorm``   BatchNorm folded into the conv's dequantization scale, or a float node
``ops``         one traced module or function -> ONNX ops (the supported-op table)
``check``       onnxruntime sessions, logits and accuracy of an exported model
``run``         :func:`~fedquant.export.run.export_run`: a run's settings and profiles -> files
``__main__``    ``python -m fedquant.export <run dir or checkpoint>``
"""
