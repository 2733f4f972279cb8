"""Triton's trace extension: which requests are traced (settings.py) and their spans, exported through
OpenTelemetry (spans.py)."""
