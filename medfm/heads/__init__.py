"""Downstream heads with the scikit-learn API, built by name from a registry."""
