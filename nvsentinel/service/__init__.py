"""What every long-running nvsentinel process shares: settings (flags > environment > defaults),
structured logs, the health/metrics HTTP endpoint, the retry schedule, the daemon entry point.
Imports only the core (docs/architecture.md)."""
