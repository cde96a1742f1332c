"""Encrypted persistent volumes on a host: drivers behind ``base.VolumeDriver``.

``luks2`` (dm-crypt on a loop file) where the kernel has device-mapper,
``gocryptfs`` (FUSE over a sized, loop-mounted ext4 file) elsewhere; the
driver is chosen per host by ``registry.choose``. ``manager.py`` is what the
agent's reconciler calls.
"""
