"""Support for app.py: knob specs, examples, teaching notes and formatting (no layout here)."""
