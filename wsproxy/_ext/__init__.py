"""Compiled accelerators (built from ext/*.pyx). See wsproxy/_speedups.py."""
