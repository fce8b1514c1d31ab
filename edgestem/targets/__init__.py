"""What the firmware is for: boards, detectors, their presets, and the throughput budget."""
