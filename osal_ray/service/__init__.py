"""osal_ray as a service: one run behind an HTTP API on Ray Serve (``python -m osal_ray.serve``).

- ``controller``: the run (its lock, rounds in a background thread, labels in, queries out); no HTTP;
- ``api``: the FastAPI application over a controller (routes, bearer auth, size limits);
- ``deployment``: the Ray Serve deployment and the builder ``serve run`` / ``serve deploy`` import;
- ``auth``: the API token, and the per-run secret that signs image URLs and the Label Studio webhook.
"""
