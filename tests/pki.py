"""A throwaway PKI for TLS tests, made with the ``openssl`` CLI: a CA, and a server and a client
certificate it signed (EC P-256, valid two days)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(folder: Path, ca_name: str = "ca") -> Path:
    """A CA (``<ca_name>.pem``/``.key``), a server certificate for localhost and 127.0.0.1
    (``server.pem``/``.key``) and a client certificate (``client.pem``/``.key``) it signed."""
    folder.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"]
    ca = ["-CA", f"{ca_name}.pem", "-CAkey", f"{ca_name}.key", "-CAcreateserial", "-days", "2"]
    _openssl("req", "-x509", *ec, "-keyout", f"{ca_name}.key", "-out", f"{ca_name}.pem", "-subj", f"/CN=Test {ca_name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=folder)  # fmt: skip
    for name, ext in (
        ("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        (folder / f"{name}.ext").write_text(f"basicConstraints=CA:FALSE\n{ext}")
        _openssl("req", *ec[:-2], "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", *ca, "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=folder
        )
    return folder
