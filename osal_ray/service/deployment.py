"""The Ray Serve deployment: one replica holding the run's controller, its FastAPI app as ingress.

``python -m osal_ray.serve`` deploys it; so can Ray Serve's own tools, through the builder::

    serve run osal_ray.service.deployment:build_app config=jobs/image_pool.yaml output_dir=runs/my_pool \
        overrides='data.root=/tmp/my_pool' token_file=/path/to/token

(``overrides``: ``key=value`` items separated by ``;``, or a list in a ``serve deploy`` config file;
the token comes from ``token_file`` or ``$OSAL_RAY_API_TOKEN`` in the process that builds the app).
The replica takes no CPU of its own (``num_cpus: 0``): the rounds it starts reserve what they use
through Ray Data and Ray Train. There is exactly one replica: the run's output directory admits one
writer.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from osal_ray.config import ExperimentConfig
from osal_ray.service.api import MAX_BODY_BYTES, build_api, image_origins
from osal_ray.service.auth import load_token, token_digest
from osal_ray.service.controller import RunController

APP_NAME = "osal_ray"


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64,
                  graceful_shutdown_timeout_s=5, logging_config={"enable_access_log": False})
@serve.ingress()
class RunService:
    """One run served over HTTP (see ``osal_ray.service.api``)."""

    def __init__(self, config: ExperimentConfig, token_sha256: str, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        from osal_ray.cluster import configure_ray_data

        configure_ray_data()
        self.controller = RunController(config, log=lambda line: print(line, flush=True)).start()
        self.token_sha256 = token_sha256
        self.max_body_bytes = max_body_bytes

    def __serve_build_asgi_app__(self):
        return build_api(self.controller, self.token_sha256, self.max_body_bytes, image_origins(self.controller.config))

    def __del__(self) -> None:
        controller = getattr(self, "controller", None)
        if controller is not None:
            controller.close()


def application(config: ExperimentConfig, token: str, max_body_bytes: int = MAX_BODY_BYTES) -> Application:
    """The Serve application for ``config``'s run; only the token's digest travels to the replica."""
    return RunService.bind(config, token_digest(token), max_body_bytes)


def build_app(args: dict[str, Any]) -> Application:
    """Builder for ``serve run`` / ``serve deploy``: ``config``, ``output_dir``, ``overrides``, ``token_file``,
    ``max_body_bytes``. Everything is checked here, before the replica starts."""
    from osal_ray.service.preflight import check_service_config

    overrides = args.get("overrides") or []
    if isinstance(overrides, str):
        overrides = [item for item in overrides.split(";") if item.strip()]
    config = check_service_config(args.get("config"), list(overrides), args.get("output_dir"))
    token = load_token(args.get("token_file"))
    return application(config, token, int(args.get("max_body_bytes", MAX_BODY_BYTES)))
