"""Downstream evaluation (``medfm evaluate``): protocols, the task table, the run, its tables and
plots."""
