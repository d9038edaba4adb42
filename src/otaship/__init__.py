"""otaship: ship ESP32 firmware from a git tag to a fleet."""

from __future__ import annotations

__version__ = "0.1.0"
