"""Formats that cross hosts, used by every process: records, artifacts, bundles."""
