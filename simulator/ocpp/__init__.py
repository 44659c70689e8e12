"""Simulated OCPP charge points (1.6J and 2.0.1) over the plant's pile models."""
