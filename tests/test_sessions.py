"""The session book's model: one rule for the visit a session leaves behind."""

from __future__ import annotations

from control.sessions import PastVisit, Session


def session(**changes: object) -> Session:
    values: dict[str, object] = {
        "vehicle_id": "EV-7",
        "pile": "P01",
        "session_id": 3,
        "plugged_at": 1000.0,
        "need_kwh": 40.0,
        "departure": 9000.0,
        "departure_known": True,
        "max_kw": 60.0,
        "delivered_kwh": 25.0,
        "said_departure": 8800.0,
    }
    values.update(changes)
    return Session(**values)  # type: ignore[arg-type]


def test_a_visit_keeps_what_the_session_knew() -> None:
    visit = PastVisit.of(session(), left_at=7000.0)
    assert visit == PastVisit(1000.0, 7000.0, 25.0, 40.0, 60.0, "EV-7", 8800.0)


def test_a_vehicle_that_took_more_than_it_asked_for_wanted_at_least_that() -> None:
    assert PastVisit.of(session(delivered_kwh=55.0), 7000.0).wanted_kwh == 55.0


def test_a_session_that_wanted_nothing_delivered_nothing_towards_a_wish() -> None:
    visit = PastVisit.of(session(need_kwh=0.0, delivered_kwh=12.0), 7000.0)
    assert (visit.delivered_kwh, visit.wanted_kwh) == (0.0, 12.0)
