"""The client side of HTTPS to configcenter servers (SDK and CLI).

``client_ssl_context(ca_file, client_cert, client_key)``:

* all None: None, i.e. aiohttp's default (https:// URLs verified against the system CA store);
* ``ca_file``: a PEM bundle that replaces the system store (only those CAs are trusted),
  for servers with certificates from a private CA;
* ``client_cert`` (+ ``client_key`` when the key is not in the same file): the certificate
  presented to servers that require one (mTLS).

The server's certificate and host name are always verified (TLS >= 1.2); there is no option
to turn verification off.  Unusable files raise ``ValueError`` with one line naming the file.
"""

from __future__ import annotations

import ssl


def client_ssl_context(ca_file: str | None = None, client_cert: str | None = None,
                       client_key: str | None = None) -> ssl.SSLContext | None:
    """The context for every request and stream of one client (see module docstring)."""
    if not (ca_file or client_cert or client_key):
        return None
    if client_key and not client_cert:
        raise ValueError("client_key given without client_cert")
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ValueError(f"CA file {ca_file}: not a readable PEM CA bundle: {_reason(exc)}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_cert:
        try:
            context.load_cert_chain(client_cert, client_key, password=_no_password)
        except (OSError, ValueError) as exc:
            key = f" with key {client_key}" if client_key else ""
            raise ValueError(f"client certificate {client_cert}{key}: cannot load: {_reason(exc)} "
                             "(PEM certificate and unencrypted key expected)") from exc
    return context


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc)


def _no_password() -> bytes:
    """Never prompt on the terminal for an encrypted key."""
    raise ValueError("the key is encrypted")
