"""Hangar: a self-hosted, security-first application platform."""

__version__ = "0.1.0"
