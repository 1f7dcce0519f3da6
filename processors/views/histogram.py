"""Log-spaced latency histograms: percentiles whose cost does not grow with the values counted.

The report's latency percentiles (:mod:`processors.ops.report`) are read from counts per bin,
kept per workflow, prompt version and hour as the views apply records (:mod:`.totals`), not from
the values themselves. Bin ``b`` holds the values in ``(GAMMA**b, GAMMA**(b+1)]`` ms, with
``GAMMA = 2**(1/8)`` (eight bins per doubling: about 80 bins from 1 ms to 1 s); a value of 0 ms or
less (a clock that ran backwards) falls in bin :data:`ZERO` and reads back as 0. A bin reads back
as ``2 * GAMMA**(b+1) / (GAMMA + 1)``, which is within :data:`RELATIVE_ERROR` (``(GAMMA-1)/(GAMMA+1)``,
4.3%) of every value in it — the bound DDSketch uses. A percentile interpolates between the two
ranks around it, as numpy does, so it too is within 4.3% of the exact percentile of the same values.
"""

from __future__ import annotations

import math

GAMMA = 2 ** (1 / 8)
RELATIVE_ERROR = (GAMMA - 1) / (GAMMA + 1)
"""How far a percentile read from the histogram may be from the exact one, relatively."""
ZERO = -(2**31)
"""The bin of values of 0 ms or less."""
_LOG_GAMMA = math.log(GAMMA)


def bin_of(value_ms: float) -> int:
    """The bin that counts ``value_ms``."""
    if value_ms <= 0:
        return ZERO
    return math.ceil(math.log(value_ms) / _LOG_GAMMA - 1e-9) - 1  # (GAMMA**b, GAMMA**(b+1)]: an edge counts below


def value_of(bin_: int) -> float:
    """What a bin reads back as: the point within RELATIVE_ERROR of all its values."""
    return 0.0 if bin_ == ZERO else 2 * GAMMA ** (bin_ + 1) / (GAMMA + 1)


def percentiles(counts: dict[int, int], quantiles: tuple[float, ...]) -> list[float] | None:
    """Each quantile of the values ``counts`` (bin → how many) holds, interpolated linearly between
    ranks as numpy does; None when it holds none."""
    bins = sorted((b, n) for b, n in counts.items() if n > 0)
    total = sum(n for _, n in bins)
    if not total:
        return None

    def at(rank: int) -> float:
        seen = 0
        for b, n in bins:
            seen += n
            if rank < seen:
                return value_of(b)
        return value_of(bins[-1][0])

    out = []
    for q in quantiles:
        rank = (total - 1) * q
        low = int(rank)
        a, b, t = at(low), at(min(low + 1, total - 1)), rank - low
        out.append(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)
    return out
