"""The test suite. A package so that every tier imports the shared helpers as ``tests.support``
(pytest puts the repository root on sys.path for it)."""
