# tests/: suites run by `make test` (each appends its target name to TEST_SUITES).
