"""The controller chain (SPEC §7): a small runtime plus one reconciler per stage."""
