"""What the test tiers share, one copy each:

- ``waiting``: ``wait_for``, the poll loop with a deadline, and ``WaitTimeout``;
- ``processes``: subprocesses in their own session (``Proc``), ``celery worker`` (``Worker``),
  their teardown, and the looks into /proc (``pid_alive``, ``group_members``);
- ``events``: the execution logs the test apps write (``Event``, ``read_events``);
- ``clock``: the settable ``Clock`` of the stores;
- ``peers``: Redis clients and free ports;
- ``paths``: the repository root and the ``queuectl`` console script.

Each tier's own kit (its harness, environment variables and apps) stays in its folder.
"""
