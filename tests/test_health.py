"""The one health pattern: told once on failure, once on recovery with the duration."""

from __future__ import annotations

import logging

import pytest

from base.health import Health


def test_an_episode_is_told_at_its_two_edges_only(caplog: pytest.LogCaptureFixture) -> None:
    told: list[tuple[float, str]] = []
    health = Health("meter M1", notify=lambda e: told.append((e.time, e.text)))
    with caplog.at_level(logging.INFO, logger="base.health"):
        assert health.recover(0.0) is False  # healthy: nothing to say
        assert health.fail(10.0, "no answer") is True
        assert health.fail(11.0, "no answer") is False
        assert health.fail(12.0, "CRC error") is False
        assert (health.ok, health.why, health.since) == (False, "CRC error", 10.0)
        assert health.recover(40.0) is True
        assert health.recover(41.0) is False
    assert told == [(10.0, "meter M1: no answer"), (40.0, "meter M1: back to normal after 30 s")]
    # The failure is an error, its end information.
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.INFO]
    assert health.episodes == 1


def test_time_down_counts_every_episode_and_the_current_one() -> None:
    health = Health("sink")
    health.fail(0.0, "refused")
    health.recover(5.0)
    health.fail(100.0, "refused")
    assert health.down_s(103.0) == pytest.approx(8.0)
    assert health.episodes == 2


def test_a_recovery_can_say_more() -> None:
    told: list[str] = []
    health = Health("telemetry", notify=lambda e: told.append(e.text))
    health.fail(0.0, "down")
    health.recover(90.0, lambda down: f"telemetry: back after {down:.0f} s; replaying 12 points")
    assert told[-1] == "telemetry: back after 90 s; replaying 12 points"
