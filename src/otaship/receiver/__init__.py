"""otaship receiver: the IoTaaP Group OTA API, device endpoints and rollouts."""
