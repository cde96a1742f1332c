"""Machine runtimes behind one protocol (runc now; microVMs later)."""
