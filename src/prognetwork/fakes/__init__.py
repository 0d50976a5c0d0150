"""Development stand-ins for third-party services."""
