"""Immutable, content-addressed dataset versions with per-sample lineage (`vlcurate version`)."""
