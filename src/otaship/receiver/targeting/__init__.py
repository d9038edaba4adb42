"""targeting."""
