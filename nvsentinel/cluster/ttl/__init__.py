"""The TTL controller (SPEC §7): delete finished HealthEvents after their retention, and keep counts bounded.

`policy` is pure (parsing the policy ConfigMap, choosing what to delete; time is passed in);
`controller` reads the caches and deletes; `config` holds the settings.
"""
