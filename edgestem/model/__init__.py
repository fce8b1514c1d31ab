"""The CC-ST-AE: the FPGA encoder (encoder.py) and the host-side head, dictionary and loss (ccstae.py)."""
