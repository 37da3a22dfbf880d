"""Developer tooling: the local KMS emulator used by the tests, ``make demo`` and the benchmark."""
