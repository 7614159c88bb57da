# cython: language_level=3
# Externs for csrc/namedtuple.h (why it is C: see the header).

cdef extern from "namedtuple.h":
    object nvs_tuple_alloc(object type, Py_ssize_t n)
    void nvs_untrack(object obj) noexcept
