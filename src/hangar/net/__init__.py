"""Private networking: addressing, namespaces, isolation, the mesh, DNS."""
