"""edgestem: 4D-STEM strain mapping from a CC-ST-AE, through quantization, to bit-accurate FPGA firmware.

Importing the package is cheap: heavy libraries (torch, brevitas, qonnx, hls4ml) load only inside the
functions that need them.
"""

__version__ = "0.1.0"
