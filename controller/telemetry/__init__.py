"""Telemetry: what the station measured, decided, planned and noticed, as time-series points.

- `points`: the data model (InfluxDB's: measurement, tags, fields, time) and the points of a
  control cycle, a plan and an event;
- `sinks`: where batches of points go (`Sink`), and InfluxDB 2.x (`InfluxSink`);
- `local`: the embedded store used without a database (`LocalStore`, `query_local`);
- `buffer`: the disk buffer that holds batches while the sink is down (`DiskBuffer`);
- `files`: the SQLite files of those two (`TelemetryError`);
- `writer`: the thread between the control loop and the sink (`TelemetryWriter`, `writer_for`).
"""
