"""Who may call the service: the API token, and the run's own secret for what cannot send it.

Every endpoint but ``/health`` needs ``Authorization: Bearer <token>``. The token comes from the
environment variable ``OSAL_RAY_API_TOKEN`` or a token file, never from the job's config; the
service keeps only its SHA-256 digest and compares digests in constant time. What callers that
cannot hold the token use (signed image URLs, the webhook's token) is ``osal_ray.annotation.secret``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from osal_ray.errors import InputError

TOKEN_ENV = "OSAL_RAY_API_TOKEN"
MIN_TOKEN_LENGTH = 16


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
