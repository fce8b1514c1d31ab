"""Detector table and rates: names, numbers with sources, rates given as numbers."""

from __future__ import annotations

import pytest

from edgestem.errors import ConfigError
from edgestem.targets.detectors import load_detectors, parse_rate, resolve_detector


def test_table_has_the_fast_detectors_with_sources():
    table = load_detectors()
    assert {"4dcamera", "empad-g2", "merlin", "arina", "timepix3-1us"} <= set(table)
    cam = table["4dcamera"]
    assert (cam.frame_rate_hz, cam.pattern, cam.certainty) == (87000, (576, 576), "paper")
    assert cam.frame_time_us == pytest.approx(1e6 / 87000)
    assert table["empad-g2"].frame_rate_hz == 10000 and table["empad-g2"].pattern == (128, 128)
    assert table["timepix3-1us"].kind == "event"
    for d in table.values():
        assert d.source and d.certainty in ("paper", "vendor", "estimate") and d.mode
        if d.certainty == "estimate":
            assert d.note or "derived" in d.source or "recalled" in d.source  # say why it is uncertain


@pytest.mark.parametrize(
    "text,hz",
    [("87000", 87000), ("87e3", 87000), ("87k", 87000), ("87 kHz", 87000), ("1MHz", 1e6), ("2.5khz", 2500)],
)
def test_parse_rate(text, hz):
    assert parse_rate(text) == pytest.approx(hz)


@pytest.mark.parametrize("text", ["fast", "87 fps", "", "k"])
def test_not_a_rate(text):
    assert parse_rate(text) is None


def test_resolve():
    assert resolve_detector("EMPAD-G2").frame_rate_hz == 10000
    given = resolve_detector("50kHz")
    assert (given.frame_rate_hz, given.certainty) == (50000, "given")
    with pytest.raises(ConfigError, match="4dcamera, empad-g2"):
        resolve_detector("k3")
    with pytest.raises(ConfigError, match="positive"):
        resolve_detector("0")
