"""fastsde benchmarks (installed as fastsde.benchmarks): suites run by `fastsde bench SUITE`."""
