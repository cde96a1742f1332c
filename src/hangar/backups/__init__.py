"""Backups with restic: the driver (``restic``) and the repository addresses Hangar accepts.

Used by the control plane (an organization's repository, the server's own
backup) and by agents (volumes' snapshots); it runs ``restic`` through
``hostcmd`` and keeps every secret out of argv, files and error messages.
"""
