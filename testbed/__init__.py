"""sendlab orchestration: the CLI, conformance runs, demos; topologies and sweeps come here."""
