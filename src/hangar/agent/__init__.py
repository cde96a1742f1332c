"""The host agent: runs machines, their networks and volumes on one host."""
