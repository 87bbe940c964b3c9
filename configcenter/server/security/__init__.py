"""Principals and scopes (tokens, roles), the audit trail (trace ids, client addresses), TLS material."""

from .audit import Network, parse_networks, request_info
from .auth import Action, Principal, TokenAuth
from .tls import EtcdTLS, EtcdTLSMaterial, ServerTLS, etcd_tls_material, server_ssl_context

__all__ = ["Action", "EtcdTLS", "EtcdTLSMaterial", "Network", "Principal", "ServerTLS", "TokenAuth",
           "etcd_tls_material", "parse_networks", "request_info", "server_ssl_context"]
