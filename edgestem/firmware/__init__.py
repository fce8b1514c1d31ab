"""Firmware backends (hls4ml, FINN, our RTL generator), their toolchain drivers and report parsers."""
