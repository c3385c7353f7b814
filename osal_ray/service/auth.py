"""Who may call the service: the API token, and the run's own secret for what cannot send it.

Every endpoint but ``/health`` needs ``Authorization: Bearer <token>``. The token comes from the
environment variable ``OSAL_RAY_API_TOKEN`` or a token file, never from the job's config; the
service keeps only its SHA-256 digest and compares digests in constant time.

Two callers cannot hold the API token: an annotator's browser showing an image in Label Studio,
and Label Studio's webhook. Both use values derived from a secret of the run
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

from osal_ray.errors import InputError

TOKEN_ENV = "OSAL_RAY_API_TOKEN"
MIN_TOKEN_LENGTH = 16
SECRET_FILE = ".osal_ray_secret"


def load_token(token_file: str | None) -> str:
    """The API token: the file's first line when ``token_file`` is given, else ``$OSAL_RAY_API_TOKEN``."""
    if token_file is not None:
        try:
            text = Path(token_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError("--token-file", f"cannot read {token_file}: {getattr(exc, 'strerror', None) or exc}") from None
        token, field = (text.strip().splitlines() or [""])[0].strip(), "--token-file"
    else:
        token, field = os.environ.get(TOKEN_ENV, "").strip(), TOKEN_ENV
        if not token:
            raise InputError(TOKEN_ENV, "not set: the service needs an API token (export OSAL_RAY_API_TOKEN=... or give "
                                        "--token-file FILE; e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise InputError(field, f"the API token must be at least {MIN_TOKEN_LENGTH} characters without spaces")
    return token


def token_digest(token: str) -> str:
    """What the service keeps of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer_matches(authorization: str | None, digest: str) -> bool:
    """Whether an ``Authorization`` header carries the token whose digest is ``digest``."""
    if not authorization:
        return False
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return False
    return hmac.compare_digest(token_digest(value.strip()), digest)


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
