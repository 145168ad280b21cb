"""TLS from config: one ``tls:`` block per connector, turned into an :class:`ssl.SSLContext`.

A listener (an ``mllp`` source, the ``fhir`` source) takes :class:`ServerTls`::

    tls: {cert_file: certs/engine.pem, key_file: certs/engine.key}            # TLS
    tls: {cert_file: ..., key_file: ..., ca_file: certs/clients-ca.pem,
          require_client_cert: true}                                          # mutual TLS

A client (an ``mllp`` destination, the ``fhir`` destination) takes :class:`ClientTls`::

    tls: {ca_file: certs/partner-ca.pem}          # trust this CA (default: the system's)
    tls: {verify: false}                          # no verification (tests only: anyone can listen)
    tls: {cert_file: ..., key_file: ...}          # present a client certificate

Paths are relative to the working directory, as every other file the config names. Both
contexts require TLS 1.2 or later. :meth:`ServerTls.check` and :meth:`ClientTls.check` load the
files as the running connector will and return each problem located at its key (``engine check``
and ``engine run`` report them as file:line: key: message); a context is only built from a
block that passed. Nothing here logs; no problem text holds a key's or certificate's content.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from engine.errors import Problem
from engine.yamlfile import Key, Located


class _Tls(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def _files(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump().items() if k.endswith("_file") and v}

    def _check(self, src: Located, key: Key) -> list[Problem]:
        problems = []
        for name, path in self._files().items():
            p = Path(path)
            if not p.is_file():
                problems.append(src.problem(key + (name,), f"file not found: {p}"))
            elif not _readable(p):
                problems.append(src.problem(key + (name,), f"file cannot be read: {p}"))
        if not problems:
            try:
                self.context()
            except TlsFileError as exc:
                problems.append(src.problem(key + (exc.field,), str(exc)))
        return problems

    if TYPE_CHECKING:  # each kind builds its own (ServerTls, ClientTls); declared here for _check

        def context(self) -> ssl.SSLContext: ...


class ServerTls(_Tls):
    """``tls:`` of a listener: its certificate, and optionally the CA its clients' certificates
    must chain to."""

    cert_file: str = Field(min_length=1)
    """PEM certificate (chain) the listener presents."""
    key_file: str | None = None
    """PEM private key of ``cert_file``; None: the key is in ``cert_file``."""
    ca_file: str | None = None
    """PEM CA certificate(s) client certificates are verified against (the system's CAs never
    are). Without
    ``require_client_cert`` a client may still connect without a certificate."""
    require_client_cert: bool = False
    """Refuse a client without a certificate from ``ca_file`` (mutual TLS); needs ``ca_file``."""
    handshake_timeout_seconds: float = Field(10.0, gt=0)
    """Longest a client may take, in seconds, to finish the TLS handshake."""

    def check(self, src: Located, key: Key) -> list[Problem]:
        """Every problem of this block (``key``: where it stands in the config file)."""
        problems = []
        if self.require_client_cert and not self.ca_file:
            problems.append(
                src.problem(key + ("require_client_cert",), "needs ca_file: the CA client certificates chain to")
            )
        return problems + self._check(src, key)

    def cert_reqs(self) -> int:
        if self.require_client_cert:
            return ssl.CERT_REQUIRED
        return ssl.CERT_OPTIONAL if self.ca_file else ssl.CERT_NONE

    def context(self) -> ssl.SSLContext:
        """A server context; raises :class:`TlsFileError` (a ValueError) naming the file's key."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # trusts no CA but ca_file (never the system's)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_chain(ctx, self.cert_file, self.key_file)
        if self.ca_file:
            _load_cas(ctx, self.ca_file)
        ctx.verify_mode = ssl.VerifyMode(self.cert_reqs())
        return ctx

    def uvicorn_kwargs(self) -> dict[str, Any]:
        """The same settings as ``uvicorn.Config`` keyword arguments."""
        return {
            "ssl_certfile": self.cert_file,
            "ssl_keyfile": self.key_file,
            "ssl_ca_certs": self.ca_file,
            "ssl_cert_reqs": self.cert_reqs(),
        }


class ClientTls(_Tls):
    """``tls:`` of a client: whom it trusts, and optionally the certificate it presents."""

    ca_file: str | None = None
    """PEM CA certificate(s) the server's certificate must chain to (and no other CA); None: the
    system's CAs."""
    verify: bool = True
    """False: accept any certificate and host name (for tests; anyone on the path can listen)."""
    cert_file: str | None = None
    """PEM client certificate (chain), for a server that requires one."""
    key_file: str | None = None
    """PEM private key of ``cert_file``; None: the key is in ``cert_file``."""

    def check(self, src: Located, key: Key) -> list[Problem]:
        """Every problem of this block (``key``: where it stands in the config file)."""
        if self.key_file and not self.cert_file:
            return [src.problem(key + ("key_file",), "a key_file needs its cert_file")]
        return self._check(src, key)

    def context(self) -> ssl.SSLContext:
        """A client context (host names checked unless ``verify`` is false); raises
        :class:`TlsFileError` like :meth:`ServerTls.context`."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # host names checked, certificates required
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.ca_file:
            _load_cas(ctx, self.ca_file)  # this CA only: not the system's too
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file:
            _load_chain(ctx, self.cert_file, self.key_file)
        return ctx


class TlsFileError(ValueError):
    """A file of a ``tls:`` block cannot be used; ``field`` names its key (``cert_file``)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _load_chain(ctx: ssl.SSLContext, cert_file: str, key_file: str | None) -> None:
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except ssl.SSLError:
        field = "key_file" if key_file else "cert_file"
        raise TlsFileError(
            field, "cannot load the certificate and its private key: not PEM, or the key is not the certificate's"
        ) from None
    except OSError as exc:
        raise TlsFileError("cert_file", f"cannot read the certificate or key: {exc.strerror}") from None


def _load_cas(ctx: ssl.SSLContext, ca_file: str) -> None:
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except ssl.SSLError:
        raise TlsFileError("ca_file", "no PEM CA certificate in it") from None
    except OSError as exc:
        raise TlsFileError("ca_file", f"cannot read it: {exc.strerror}") from None


def _readable(path: Path) -> bool:
    try:
        with path.open("rb"):
            return True
    except OSError:
        return False
