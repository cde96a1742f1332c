"""OCI images: layouts and their blobs (``oci``), unpacked root filesystems
(``store``), and copies from registries (``registry``). The control plane and
the agents both use them."""
