"""The one seed rule: a stream number per purpose; the numbers are part of every result."""

from __future__ import annotations

import numpy as np

from edgestem.seeds import STREAMS, level_seed, rng

# The numbers every stored result (simulated data, noise files, splits, reports) was drawn with.
HISTORICAL = {
    "specimen": 1,
    "disks": 2,
    "noise": 3,
    "hot_pixels": 4,
    "split": 11,
    "shuffle": 12,
    "augment": 13,
    "dictionary": 14,
    "compare": 21,
    "emulate": 22,
    "report": 23,
    "report_sample": 24,
    "robustness_test": 21,
}


def test_the_table_keeps_the_numbers_results_were_drawn_with():
    assert STREAMS == HISTORICAL


def test_generators_are_seed_stream_and_index():
    a = rng(7, "report", 2).random(4)
    assert np.array_equal(a, np.random.default_rng([7, 23, 2]).random(4))
    assert not np.array_equal(a, rng(7, "report", 3).random(4))
    assert not np.array_equal(rng(7, "emulate").random(4), rng(7, "compare", 0).random(4))


def test_generator_streams_are_distinct():
    generators = {k: v for k, v in STREAMS.items() if k != "robustness_test"}
    assert len(set(generators.values())) == len(generators)


def test_level_seed_is_a_31_bit_seed_per_level():
    seeds = {level_seed(0, v) for v in (0.0, 0.1, 0.25, 0.5)}
    assert len(seeds) == 4 and all(0 <= s < 2**31 for s in seeds)
    expected = np.random.SeedSequence([0, 21, 250000]).generate_state(1)[0] % 2**31
    assert level_seed(0, 0.25) == expected
