"""Smoke-scale reference tables (``smoke/``) and the script that writes them (``make_reference_tables``)."""
