"""Export: the quantized encoder as files (QONNX, QCDQ) verified by execution, and its integer model."""
