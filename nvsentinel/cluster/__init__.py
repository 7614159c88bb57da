"""What runs in the cluster (the controllers Deployment): the stage registry, the ownership rules the
stages share, and the stages (quarantine, drain, remediation, resolution, TTL). No stage imports
another, and nothing here imports `nvsentinel.node` (docs/architecture.md)."""
