"""Forecasts of the site's own load for the scheduler.

The operator's daily profile (`[background] profile_kw`, or one learned from a history CSV) is
pulled towards the latest measurement, with the pull fading over an hour: what the depot draws
now says a lot about the next minutes and little about tonight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray


class BackgroundForecast:
    """A daily profile (24 hourly values, local time) corrected by the latest measurement."""

    def __init__(
        self, profile_kw: Sequence[float], zone: ZoneInfo, *, fade_s: float = 3600.0
    ) -> None:
        if len(profile_kw) != 24:
            raise ValueError(f"a daily profile has 24 hourly values, got {len(profile_kw)}")
        self.profile = np.asarray(profile_kw, dtype=float)
        self.zone = zone
        self.fade_s = fade_s

    def profile_at(self, when: float) -> float:
        """The profile at `when`, linear between hour midpoints."""
        local = datetime.fromtimestamp(when, self.zone)
        hour = local.hour + local.minute / 60 + local.second / 3600 - 0.5
        low = math.floor(hour)
        frac = hour - low
        return float((1 - frac) * self.profile[low % 24] + frac * self.profile[(low + 1) % 24])

    def __call__(
        self, boundaries: NDArray[np.float64], now: float, measured_kw: float | None
    ) -> NDArray[np.float64]:
        """Forecast average load of each slot between `boundaries`."""
        mids = (boundaries[:-1] + boundaries[1:]) / 2
        base = np.array([self.profile_at(float(t)) for t in mids])
        if measured_kw is None:
            return base
        error = measured_kw - self.profile_at(now)
        return np.maximum(base + error * np.exp(-(mids - now) / self.fade_s), 0.0)
