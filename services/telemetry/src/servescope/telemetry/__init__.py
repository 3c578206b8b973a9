"""Shared plumbing for the Servescope services.

Settings base, health state, JSON errors, structured logging and the server lifecycle
(graceful drain on SIGTERM) live here so the three services behave the same way.
"""
