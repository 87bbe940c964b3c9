"""Bounds and tunings every part of the server reads (a leaf: it imports nothing of the server).

``settings.py`` loads them from the configuration file; the packages receive them as values.
"""

from __future__ import annotations

from dataclasses import dataclass

from configcenter.errors import ConfigError


@dataclass(frozen=True)
class Limits:
    """Bounds on everything a client controls (see ``docs/bad-input.md``)."""

    max_body_bytes: int = 1_048_576  # raw request body, checked before reading it
    max_doc_bytes: int = 753_664  # the document after YAML alias expansion, as encoded JSON (736 KiB: see below)
    max_depth: int = 64  # nesting of a request body (JSON and YAML alike)
    max_regex_program_size: int = 100  # RE2 program size of one header regex (Envoy's default)
    subscriber_queue: int = 1024
    history_ring: int = 10_000
    header_timeout: float = 10.0  # seconds for a connection to deliver complete request headers
    max_connections: int = 16_384  # open client connections (SSE streams included); more are refused
    cpu_workers: int = 2  # threads for parse / validate of writes (push, rollback, schemas): admission.py
    write_queue: int = 64  # writes waiting for those threads; more get 429 with Retry-After
    read_cpu_workers: int = 1  # worker processes (nice 19) for route-evaluation bodies and diffs (anonymous reach)
    read_queue: int = 2  # such reads waiting (each may hold a body or two documents); more get 429
    read_worker_max_rss: int = 268_435_456  # a read worker past this RSS after a job is replaced (address space: 4x)
    read_job_timeout: float = 30.0  # seconds one read-worker job may take; then the worker is killed (503)
    max_instances: int = 10_000  # live SDK instance records in etcd; new ones past it get 429 (fleet/_admission.py)
    max_instances_per_client: int = 1_000  # the same per token name, or per address (IPv6: per /64) without one
    max_streams_per_address: int = 1_024  # open watch streams from one client address (IPv6: per /64); 429 past it
    max_streams_per_principal: int = 4_096  # open watch streams of one token name; 429 past it
    drain_timeout: float = 30.0  # seconds a stream's client may leave written bytes unread (watch/_sse_channel.py)


ETCD_MAX_REQUEST_BYTES = 1_572_864  # etcd's default --max-request-bytes (1.5 MiB)
RECORD_ALLOWANCE = 65_536  # per release, beyond the document twice: metadata, keys, transaction framing


def check_record_fits(limits: Limits, etcd_max_request_bytes: int) -> None:
    """A release stores its record twice in one etcd request (``docs/`` and ``history/``): ``ConfigError``
    unless ``2 * max_doc_bytes + RECORD_ALLOWANCE`` fits ``etcd.max_request_bytes`` (then a document
    within ``max_doc_bytes`` is refused only for an oversized message, 413 at the store)."""
    most = (etcd_max_request_bytes - RECORD_ALLOWANCE) // 2
    if limits.max_doc_bytes > most:
        raise ConfigError(
            f"limits.max_doc_bytes {limits.max_doc_bytes} is too large for etcd.max_request_bytes "
            f"{etcd_max_request_bytes}: a release stores the document twice in one etcd request, so at most "
            f"{max(most, 0)} (raise etcd's --max-request-bytes and etcd.max_request_bytes together)")


@dataclass(frozen=True)
class WatchTuning:
    """How the mirror talks to etcd and how often the hub says it is alive."""

    progress_interval: float = 5.0
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    etcd_timeout: float = 5.0
    write_visibility_timeout: float = 2.0
    instance_ttl: float = 30.0  # lease of an SDK instance's report (fleet/registry.py); SDKs heartbeat every ttl/3
