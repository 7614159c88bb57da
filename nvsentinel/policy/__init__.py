"""Pure decisions, no I/O: the condition contract, the HealthEvent model, naming, outcomes, breaker
and TTL arithmetic. Imports only the core (docs/architecture.md); unit- and property-tested on plain values."""
