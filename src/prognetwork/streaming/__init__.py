"""The event streaming service (port 8001): the event log as Server-Sent Events, polling and publishing."""
