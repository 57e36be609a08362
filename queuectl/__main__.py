"""`python -m queuectl`: the `queuectl` command (same options, output and exit codes)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main()
