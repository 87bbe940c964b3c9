"""The etcd user the server authenticates as (``etcd.username`` + ``etcd.password_file``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EtcdCredentials:
    """An etcd user for clusters with authentication enabled; exactly one of ``password`` and
    ``password_file`` (read again at every authentication, so a rotated password needs no restart)."""

    username: str
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None
