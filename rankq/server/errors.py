"""Errors of the server layer (the engine's own live in rankq.engine.errors)."""

from __future__ import annotations


class Unavailable(Exception):
    """The group cannot commit writes right now (no leader yet, leadership lost, or timed out)."""


class ClusterConflict(Exception):
    """A membership or leadership request that conflicts with the group's state (HTTP 409)."""
