"""Shared fixtures: nothing here starts a reactor; integration tests run real processes."""
