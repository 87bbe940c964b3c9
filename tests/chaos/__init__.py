"""The fault suite: a seeded chaos harness and a consistency checker (see ``docs/fault-suite.md``)."""
