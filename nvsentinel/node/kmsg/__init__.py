"""The kernel-log monitor (SPEC §5): follow /dev/kmsg or a log file, decode XIDs, write `KmsgHealthy`.

`cursor` and `logic` are pure (no I/O); `monitor` does the reading and the Device API writes.
"""
