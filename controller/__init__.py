"""The daemon's services: fast loop, plan loop, state store, telemetry, API and metrics."""
