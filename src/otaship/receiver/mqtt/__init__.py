"""MQTT: the embedded broker, the receiver's own connection, triggers and reports."""
