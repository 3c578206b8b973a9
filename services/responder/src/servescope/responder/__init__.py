"""The alert responder: Alertmanager webhook in, diagnosis against Prometheus, incident note out."""
