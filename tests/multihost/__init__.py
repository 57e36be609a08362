"""Multi-host tests: worker hosts as network namespaces, a PostgreSQL broker of their own."""
