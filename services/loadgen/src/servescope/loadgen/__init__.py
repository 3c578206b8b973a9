"""The `servescope` command: local mode, predictions and the traffic generator."""
