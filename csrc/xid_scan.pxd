# cython: language_level=3
# Externs for csrc/xid_scan.h (why it is C: see the header).

cdef extern from "xid_scan.h":
    Py_ssize_t xid_next_anchor(const unsigned char *s, Py_ssize_t lo, Py_ssize_t n) noexcept nogil
    Py_ssize_t xid_find(const unsigned char *s, Py_ssize_t i, Py_ssize_t n,
                        const char *lit, Py_ssize_t length) noexcept nogil
    Py_ssize_t xid_rfind(const unsigned char *s, Py_ssize_t i, Py_ssize_t n,
                         const char *lit, Py_ssize_t length) noexcept nogil
