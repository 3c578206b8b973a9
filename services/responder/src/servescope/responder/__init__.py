"""The alert responder: Alertmanager webhook in, diagnosis against Prometheus, incident note out.

Modules: settings (the environment), prometheus (the HTTP API client), playbooks (the
diagnostic queries per alert category), culprits (from results to service, stage and step),
notes (incident ids, markdown, the Responder that writes the notes), app (the HTTP wiring).
"""
