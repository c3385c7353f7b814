"""``python -m osal_ray.serve --config JOB --output-dir DIR [--host 127.0.0.1] [--port 8000]``: one run as an HTTP service.

Starts (or joins, with RAY_ADDRESS / ray.address) Ray, deploys the run on Ray Serve and serves
until interrupted (Ctrl-C or SIGTERM). The API token comes from ``$OSAL_RAY_API_TOKEN`` or
``--token-file``. Bad input exits with code 2 and one line naming the problem, before Ray starts.
Endpoints: see ``osal_ray.service.api`` or ``http://HOST:PORT/docs``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from osal_ray.errors import InputError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m osal_ray.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="a job YAML file (see jobs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config key (repeatable), as for python -m osal_ray.run")
    parser.add_argument("--output-dir", help="the run's output directory (default outputs/<name>)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument("--token-file", help="file whose first line is the API token (default: $OSAL_RAY_API_TOKEN)")
    parser.add_argument("--max-body-bytes", type=int, default=None, help="largest request body accepted (default 1 MiB)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from osal_ray.service.api import MAX_BODY_BYTES
    from osal_ray.service.auth import load_token
    from osal_ray.service.preflight import check_service_config

    try:
        if not 0 < args.port < 65536:
            raise InputError("--port", f"{args.port} is not a TCP port (1-65535)")
        max_body = MAX_BODY_BYTES if args.max_body_bytes is None else args.max_body_bytes
        if max_body < 1024:
            raise InputError("--max-body-bytes", "must be at least 1024")
        token = load_token(args.token_file)
        config = check_service_config(args.config, args.overrides, args.output_dir)
    except InputError as exc:
        print(f"osal_ray.serve: error: {exc}", file=sys.stderr)
        return 2

    from osal_ray.runlog import run_log

    with run_log(config.resolved_output_dir().resolve(), ["serve", *(argv if argv is not None else sys.argv[1:])]):
        return _serve(config, token, args.host, args.port, max_body)


def _not_reconnecting(record: logging.LogRecord) -> bool:
    """Drop the line ``serve.run`` logs when it finds the Serve instance ``serve.start`` just started with
    this service's HTTP options ("Connecting to existing Serve app ... will not be applied"): those
    options were applied, so the line would only mislead."""
    return not record.getMessage().startswith("Connecting to existing Serve app")


def _serve(config, token: str, host: str, port: int, max_body: int) -> int:
    from ray import serve

    from osal_ray.cluster import connect_ray
    from osal_ray.service.deployment import APP_NAME, application

    connect_ray(config.ray)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    serve.start(http_options={"host": host, "port": port})
    serve_logger = logging.getLogger("ray.serve")
    serve_logger.addFilter(_not_reconnecting)
    try:
        serve.run(application(config, token, max_body), name=APP_NAME, route_prefix="/")
    except RuntimeError as exc:
        print(f"osal_ray.serve: error: the service did not start: {exc}", file=sys.stderr)
        serve.shutdown()
        return 1
    finally:
        serve_logger.removeFilter(_not_reconnecting)
    print(f"osal_ray service for {config.resolved_output_dir().resolve()} at http://{host}:{port} "
          f"(API docs: http://{host}:{port}/docs; Ctrl-C stops it)", flush=True)
    stop.wait()
    print("stopping the service; run the same command again to continue where it stopped", flush=True)
    serve.delete(APP_NAME)
    serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
