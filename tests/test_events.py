"""Events are records (`base.events`), made where they happen with their source, kind and device;
`DeviceRef.label` is the one way a device is named."""

from __future__ import annotations

import dataclasses

import pytest

from base.config import Station
from base.events import DeviceRef, Event, Kind, Source
from control.sensing import Sensors
from control.site import Feed
from controller.telemetry.points import event_point
from drivers.errors import DeviceTimeout
from drivers.meter import MeterReading

T0 = 1_800_000_000.0
P01 = DeviceRef.pile("P01")
GRID = DeviceRef.meter("grid")


def test_a_device_is_named_by_its_label() -> None:
    assert (P01.label, GRID.label, DeviceRef.terminal("T1").label) == (
        "pile P01",
        "meter grid",
        "terminal T1",
    )
    assert DeviceRef("pile", "P01") == P01 and len({P01, DeviceRef.pile("P01")}) == 1


def test_an_event_is_a_frozen_record() -> None:
    event = Event(T0, Source.CONTROL, Kind.CURTAILING, "curtailing: vehicles want more")
    assert event.device is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.text = "something else"  # type: ignore[misc]
    # Both vocabularies are strings, as telemetry tags and API fields carry them.
    assert (Source.DEVICE, Kind.CURTAILMENT_ENDED) == ("device", "curtailment-ended")


def test_a_feed_tells_its_failure_and_recovery_as_events_from_its_device() -> None:
    told: list[Event] = []
    feed = Feed[float](P01, told.append)
    feed.failed(DeviceTimeout(feed.label, "no answer"), T0)
    feed.failed(DeviceTimeout(feed.label, "no answer"), T0 + 1)
    feed.succeeded(1.0, T0 + 10)
    assert told == [
        Event(T0, Source.DEVICE, Kind.FAILED, "pile P01: no answer", P01),
        Event(T0 + 10, Source.DEVICE, Kind.RECOVERED, "pile P01: back to normal after 10 s", P01),
    ]


def test_sensors_tell_late_answers_from_the_device_and_overrides_from_the_operator(
    reference: Station,
) -> None:
    told: list[Event] = []
    sensors = Sensors(reference, notify=told.append)
    tariff = reference.tariff
    sensors.take_meter(MeterReading(power_kw=1500.0), T0, at=T0 - 3)
    sensors.snapshot(T0, tariff)
    sensors.take_meter(MeterReading(power_kw=1501.0), T0 + 1)
    sensors.snapshot(T0 + 1, tariff)
    sensors.override_limit(1000.0, T0 + 100, T0 + 2, "maintenance")
    sensors.clear_override(T0 + 3)
    sensors.override_limit(1000.0, T0 + 10, T0 + 4)
    sensors.take_meter(MeterReading(power_kw=1502.0), T0 + 10)
    sensors.snapshot(T0 + 10, tariff)
    assert [(e.time, e.source, e.kind, e.device) for e in told] == [
        (T0, Source.DEVICE, Kind.LATE, GRID),
        (T0 + 1, Source.DEVICE, Kind.IN_TIME, GRID),
        (T0 + 2, Source.OPERATOR, Kind.OVERRIDE, None),
        (T0 + 3, Source.OPERATOR, Kind.OVERRIDE_ENDED, None),
        (T0 + 4, Source.OPERATOR, Kind.OVERRIDE, None),
        (T0 + 10, Source.OPERATOR, Kind.OVERRIDE_ENDED, None),
    ]
    assert [e.text for e in told][2:4] == [
        "operator override: site limit at most 1,000 kW (maintenance)",
        "operator override of 1,000 kW withdrawn",
    ]


def test_an_event_point_carries_source_kind_and_device_as_tags() -> None:
    event = Event(T0, Source.DEVICE, Kind.FAILED, "pile P01: no answer", P01)
    point = event_point("depot", T0, event, 7)
    assert point.measurement == "event"
    assert dict(point.tags) == {
        "station": "depot",
        "source": "device",
        "kind": "failed",
        "device": "pile P01",
    }
    assert dict(point.fields) == {"text": "pile P01: no answer", "seq": 7}
    control = event_point("depot", T0, Event(T0, Source.CONTROL, Kind.OBSERVED, "x"), 8)
    assert control.tag("device") is None
