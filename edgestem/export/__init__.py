"""Firmware: QONNX export, hls4ml and FINN projects, board presets, synthesis reports and budgets."""
