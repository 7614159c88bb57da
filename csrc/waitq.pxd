# cython: language_level=3
# Externs for csrc/waitq.h (why it is C: see the header).

cdef extern from "waitq.h":
    ctypedef struct nvs_waitq:
        pass
    int nvs_waitq_init(nvs_waitq *q) noexcept
    void nvs_waitq_destroy(nvs_waitq *q) noexcept
    unsigned long long nvs_waitq_gen(nvs_waitq *q) noexcept nogil
    void nvs_waitq_notify(nvs_waitq *q) noexcept nogil
    int nvs_waitq_wait(nvs_waitq *q, unsigned long long seen, double timeout) noexcept nogil
