"""Features, heads (scikit-learn API), metrics and robustness (pure functions of arrays)."""
