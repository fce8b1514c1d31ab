"""The one seed rule: every random draw comes from the config's ``seed`` and a stream number per purpose.

A draw is ``numpy.random.default_rng([seed, stream, *index])``: ``seed`` is the config's (or a
command's ``--seed``), ``stream`` the number of its purpose in :data:`STREAMS`, and ``index`` what
makes one draw of that purpose differ from the next (a scan row, an epoch and a batch, a noise
level's position in a list). Draws never share a running generator, so a resumed or re-ordered
computation draws the same numbers, and two purposes never draw the same numbers from one seed.

The numbers are part of the results: changing one changes every number that purpose produces
(simulated data, noise, splits, reports), so they stay as they are and a new purpose takes a new
number. (``robustness_test`` shares 21 with ``compare`` from before this table existed; it makes
integer seeds through a ``SeedSequence`` with the level in it, never the same numbers.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

STREAMS: dict[str, int] = {
    # data: simulation and noise (edgestem simulate / noise)
    "specimen": 1,  # the specimen's strain and rotation fields
    "disks": 2,  # intensity variation inside the disks, index: scan row
    "noise": 3,  # shot noise, read noise, index: scan row
    "hot_pixels": 4,  # the fixed mask of hot detector pixels
    # training (edgestem train, qat, prune)
    "split": 11,  # the train/validation split
    "shuffle": 12,  # batch order, index: epoch
    "augment": 13,  # noise augmentation, index: epoch, batch
    "dictionary": 14,  # partition of the training patterns that starts several dictionaries
    # evaluation: noise drawn on clean labelled patterns
    "compare": 21,  # models compared at noise levels (qat, prune), index: the level's position
    "emulate": 22,  # edgestem emulate --noise-w / --dose (one level, no index)
    "report": 23,  # edgestem report, index: the level's position
    "report_sample": 24,  # the patterns each emulated stage is run on in edgestem report
    "robustness_test": 21,  # robustness / sweep test columns: an integer seed per level (level_seed)
}


def rng(seed: int, stream: str, *index: int) -> np.random.Generator:
    """The generator of one draw: ``default_rng([seed, STREAMS[stream], *index])``."""
    import numpy as np

    return np.random.default_rng([int(seed), STREAMS[stream], *(int(i) for i in index)])


def level_seed(seed: int, level: float) -> int:
    """The seed of a robustness test column's noise file at ``level`` (an integer seed for ``edgestem noise``)."""
    import numpy as np

    state = np.random.SeedSequence([int(seed), STREAMS["robustness_test"], round(level * 1e6)]).generate_state(1)[0]
    return int(state) % 2**31


__all__ = ["STREAMS", "level_seed", "rng"]
