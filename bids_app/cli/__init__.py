"""Command-line interface (parser and entry point)."""
