"""Operator views: what `nvsentinel status`, `get` and `describe` print, computed from plain objects
(pure: no client, no clock; the commands read the cluster and pass `now`)."""
