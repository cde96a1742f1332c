"""Pure rules: no I/O is imported here."""
