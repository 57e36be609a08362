"""An existing Celery project switched to queuectl: load with ``app.config_from_object("celeryconfig")``."""

# The broker is one SQLite file. Four slashes for an absolute path, three for a path relative to
# the worker's current directory. No server runs; every process on this machine that opens the
# same file shares the queues.
broker_url = "sqlite:////var/lib/proj/queue.db"

# Lets Celery find the transport without `import queuectl_kombu` anywhere in the project.
broker_transport = "queuectl_kombu.transport:Transport"

broker_transport_options = {
    # Seconds a delivered message stays leased to a worker. A live worker renews its leases,
    # so long tasks are safe; a killed worker's messages are delivered again after this time.
    "visibility_timeout": 30,
    # Seconds completed messages stay in the file (for `queuectl list`); 0 deletes them on ack.
    "retention": 86400,
    # Broker-side retries of rejected messages (see task_acks_on_failure_or_timeout below):
    # max_retries retries, waiting backoff_base ** attempts seconds. Left unset, the values of
    # `queuectl config` apply and can be changed while workers run.
    # "max_retries": 3,
    # "backoff_base": 2,
}

# JSON only: whoever can write the queue file must not get code execution through pickle.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]

# Acknowledge after the task ran, so a task whose worker dies is delivered again.
task_acks_late = True
task_reject_on_worker_lost = True
# A failed task is rejected instead of acknowledged: the broker retries it with backoff and
# moves it to the dead-letter state after max_retries.
task_acks_on_failure_or_timeout = False
# With late acks, take one message per process at a time.
worker_prefetch_multiplier = 1
