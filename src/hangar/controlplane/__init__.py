"""Control-plane services: composition, bootstrap and the server process."""
