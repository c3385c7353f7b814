"""The run's own secret, for what cannot hold the service's API token.

Two callers cannot hold the API token: an annotator's browser showing an image in Label Studio, and
Label Studio's webhook. Both use values derived from a secret of the run
(``<output_dir>/.osal_ray_secret``, created once, mode 0600): an image URL carries a signature of
its key (``?sig=``), valid for that image only; the webhook sends a bearer token valid for the
webhook only.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

SECRET_FILE = ".osal_ray_secret"


def run_secret(output_dir: Path) -> bytes:
    """The run's secret (created on first use, readable by its owner only)."""
    path = output_dir / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        pass
    output_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:  # another process made it first
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(value.hex())
    return value


def _derive(output_dir: Path, purpose: str, value: str = "") -> str:
    return hmac.new(run_secret(output_dir), f"{purpose}\0{value}".encode(), hashlib.sha256).hexdigest()[:40]


def signed_image_url(service_url: str, output_dir: Path, key: str) -> str:
    """An image URL that works without the API token (for Label Studio's image tags)."""
    return f"{service_url.rstrip('/')}/images/{key}?sig={_derive(output_dir, 'image', key)}"


def image_signature_ok(output_dir: Path, key: str, signature: str | None) -> bool:
    return bool(signature) and hmac.compare_digest(_derive(output_dir, "image", key), signature)


def webhook_token(output_dir: Path) -> str:
    """The bearer token Label Studio's webhook sends (good for the webhook endpoint only)."""
    return _derive(output_dir, "label-studio-webhook")


def webhook_headers(output_dir: Path) -> dict[str, str]:
    return {"Authorization": f"Bearer {webhook_token(output_dir)}"}
