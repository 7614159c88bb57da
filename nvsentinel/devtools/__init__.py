"""Developer tooling: the demo, the local control plane, the fake libnvidia-ml and the benchmark
workloads. Never imported by the library: only the CLI and the daemons' explicit `--fake-nvml`
wiring reach in (an import-linter contract)."""
