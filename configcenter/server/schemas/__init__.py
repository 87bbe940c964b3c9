"""Per-namespace JSON Schemas in etcd (with history) and the check of every ``config`` push."""

from .store import SchemaRelease, SchemaStore, SchemaWrite

__all__ = ["SchemaRelease", "SchemaStore", "SchemaWrite"]
