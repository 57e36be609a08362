"""Result backend tests: the ResultStore, SQLiteBackend in process, and real workers."""
