"""sendlab orchestration: topologies, experiments, the simulated and emulated backends,
sweeps, reports and the ``sendlab`` command line."""
