"""otaship receiver: the IoTaaP Group OTA API, device endpoints and rollouts."""
from __future__ import annotations

__version__ = "0.1.0"
