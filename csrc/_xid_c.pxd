# cython: language_level=3
# Index of csrc/_xid_c.pyx, the compiled kernel-log / XID decoder.
# Behaviour and documentation: nvsentinel/_xid_py.py (the twin); this file only lists state.

ctypedef unsigned char uchar


cdef struct Pci:
    unsigned long long domain       # parsed from 4..8 hex digits; 0 when the line had none
    uchar bus0, bus1, dev0, dev1    # the two hex digits of bus and device, as printed


cdef class Decoder:
    cdef:
        object _catalog             # nvsentinel.catalog.Catalog
        object _classify            # its bound classify()
        dict _classes               # classify() arguments tuple -> Classification (memo)
        dict _uuid_by_pci           # canonical PCI id -> GPU UUID
        dict _pci_by_uuid           # GPU UUID -> canonical PCI id
        bytearray _partial          # unfinished last line: at most MAX_LINE_BYTES + 1 bytes
        bint _overflow              # that line was longer (its tail is dropped)
        object _pending_pci         # str: an open fallen-off-the-bus record's PCI id; None: none
        tuple _pending_time         # (timestamp, clock, time_text) of the record's first line
        list _pending_lines         # the record's lines (bytes), first line included
        str _pending_device         # "10de:26b5" once seen in the record, else ""
        bint _pending_truncated     # one of the record's lines was cut
        int _pending_left           # lines still searched for "fallen off the bus"
        unsigned long _pending_gen  # bumped when a record opens (the twin compares identities)

    cdef int _keep(self, const uchar *s, Py_ssize_t n) except -1
    cdef int _scan(self, const uchar *buf, Py_ssize_t n, list out) except -1
    cdef int _line(self, const uchar *s, Py_ssize_t n, bint overflow, list out) except -1
    cdef object _rules(self, const uchar *s, Py_ssize_t n, bint truncated)
    cdef object _rule_xid(self, const uchar *s, Py_ssize_t n, bint truncated)
    cdef object _xid_event(self, const uchar *s, Py_ssize_t n, Py_ssize_t start, Py_ssize_t tail,
                           Pci *pci, long xid, long gpu_i, long gpu_ci, bint truncated)
    cdef object _rule_sxid(self, const uchar *s, Py_ssize_t n, bint truncated)
    cdef object _rule_mapping(self, const uchar *s, Py_ssize_t n, bint truncated)
    cdef object _rule_fallen_line(self, const uchar *s, Py_ssize_t n, bint truncated)
    cdef object _rule_fallen_start(self, const uchar *s, Py_ssize_t n, bint truncated, bint *opened)
    cdef object _rule_reset(self, const uchar *s, Py_ssize_t n, bint truncated)
    cdef object _fallen_record(self, const uchar *s, Py_ssize_t n, Py_ssize_t at, bint truncated)
    cdef object _build(self, str kind, str error_code, object xid, str pci, tuple time, bytes raw,
                       bint truncated, str gpu_uuid, object pid, str process, object channel,
                       str message, object gpu_i, object gpu_ci, object location, object link,
                       tuple registers, str recovery_action, object recovery_code, object nvlink5,
                       str severity, object switch, str device_id, bint healthy, object warning)
