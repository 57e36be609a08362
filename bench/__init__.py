"""Benchmarks of queuectl against other Celery brokers: ``python3 bench/run.py --help``."""
