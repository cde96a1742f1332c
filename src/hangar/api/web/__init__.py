"""Hangar's few web pages, served by the API over its TLS (see ``frame.py``)."""
