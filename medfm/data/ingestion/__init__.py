"""Ingestion: scan sources into a pseudonymous manifest, labels, splits, quarantine."""
