"""Machine runtimes behind one protocol (``base.Runtime``), chosen by name (``registry``).

``runc`` runs containers today; a microVM driver registers beside it. ``fake``
is an in-memory driver for unit tests only.
"""
