"""Data: synthetic multi-center data, file writers, ingestion to manifests, datasets."""
