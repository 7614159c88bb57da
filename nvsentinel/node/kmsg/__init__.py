"""The kernel-log monitor (SPEC §5): follow the kernel log (syslog(2), /dev/kmsg) or a log file, decode
XIDs and NVSwitch SXids, write `KmsgHealthy` (an SXid on every GPU of the node, docs/conditions.md).

`cursor`, `ring` and `logic` are pure (no I/O); `klogctl` is the syslog(2) call, `sources` the
readers, `monitor` the loop and the Device API writes.
"""
