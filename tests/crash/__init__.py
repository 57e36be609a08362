"""Crash, load and fault tests (issue 7): real workers, real kills, nothing lost."""
