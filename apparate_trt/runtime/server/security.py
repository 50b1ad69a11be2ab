"""Optional transport security for the server: TLS (a server certificate and key) for REST and
gRPC, and a bearer token every inference and metadata call must carry.

Both are off by default, and the default bind address stays 127.0.0.1. With a token, REST calls
send ``Authorization: Bearer TOKEN`` and gRPC calls the metadata ``authorization: Bearer TOKEN``;
the liveness and readiness probes (``/v2/health/*``, ServerLive, ServerReady) stay open, so that
an orchestrator can probe without the secret. A wrong or missing token gets 401 /
UNAUTHENTICATED. The token is read from a file or an environment variable, never from the
command line (where other users could read it in the process list).
"""

from __future__ import annotations

import hmac
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from apparate_trt.errors import ApparateError

TOKEN_ENV = "APPARATE_AUTH_TOKEN"
"""Environment variable that holds the bearer token when no token file is given."""
OPEN_HTTP_PATHS = ("/v2/health/live", "/v2/health/ready")
"""REST paths served without the token (liveness and readiness probes)."""
OPEN_GRPC_METHODS = ("ServerLive", "ServerReady")
"""gRPC methods served without the token."""


@dataclass(frozen=True)
class Security:
    """TLS certificate and key files (PEM; both or neither) and the bearer token (None: none)."""

    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None

    @property
    def tls(self) -> bool:
        """True when the server speaks TLS."""
        return self.cert_file is not None

    def ssl_context(self) -> ssl.SSLContext:
        """A server-side TLS context (TLS 1.2 or later) over the certificate and key."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        return ctx

    def pem_pair(self) -> tuple[bytes, bytes]:
        """``(private key, certificate chain)`` as PEM bytes (what gRPC takes)."""
        return _read(str(self.key_file), "--tls-key"), _read(str(self.cert_file), "--tls-cert")

    def authorized(self, header: str | None) -> bool:
        """True when no token is set, or ``header`` is ``Bearer TOKEN`` (compared in constant time)."""
        if self.token is None:
            return True
        if not header:
            return False
        scheme, _, value = header.strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode())


def load_security(
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    token_file: str | Path | None = None,
    token_env: bool = True,
) -> Security:
    """Check the TLS certificate and key (PEM; give both or neither) and read the token (from
    ``token_file``, else ``$APPARATE_AUTH_TOKEN`` when ``token_env``; None: no token).

    Raises:
        ApparateError: one file given without the other, a file that cannot be read, a key that
            does not match the certificate, or an empty token.
    """
    if (tls_cert is None) != (tls_key is None):
        raise ApparateError("TLS needs both --tls-cert and --tls-key (PEM files), or neither")
    security = Security(str(tls_cert) if tls_cert is not None else None, str(tls_key) if tls_key is not None else None)
    if security.tls:
        security.pem_pair()  # readable
        try:
            security.ssl_context()
        except (ssl.SSLError, OSError) as exc:
            raise ApparateError(
                f"cannot use {tls_cert} and {tls_key} for TLS ({exc}); give a PEM certificate and its private key"
            ) from None
    token: str | None = None
    if token_file is not None:
        token = _read(str(token_file), "--auth-token-file").decode("utf-8", "replace").strip()
        if not token:
            raise ApparateError(f"--auth-token-file {token_file} is empty; put the bearer token in it")
    elif token_env and os.environ.get(TOKEN_ENV, "").strip():
        token = os.environ[TOKEN_ENV].strip()
    if token is not None and any(c.isspace() for c in token):
        raise ApparateError("the bearer token must not contain whitespace")
    return Security(security.cert_file, security.key_file, token)


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ApparateError(
            f"cannot read {flag} {path} ({exc.strerror or exc}); check the path and its permissions"
        ) from None
