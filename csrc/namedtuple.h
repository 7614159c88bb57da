#ifndef NVSENTINEL_NAMEDTUPLE_H
#define NVSENTINEL_NAMEDTUPLE_H
/*
 * Allocate an instance of a tuple subclass (a typing.NamedTuple such as XidEvent) with n empty
 * slots, for the caller to fill with PyTuple_SET_ITEM.
 *
 * Why C: Cython does not expose tp_alloc, and `tuple.__new__(cls, values)` first builds a plain
 * tuple and then copies it: one extra GC-tracked allocation per decoded event, which showed up
 * as a third of the decoder's time (cyclic-GC passes over the temporaries). This is exactly what
 * CPython's tuple_subtype_new does after it has the values.
 * The caller must make every item before calling this (no allocation while slots are empty).
 */
#include <Python.h>

static inline PyObject *nvs_tuple_alloc(PyObject *type, Py_ssize_t n)
{
    PyTypeObject *t = (PyTypeObject *)type;
    if (!PyType_Check(type) || !PyType_IsSubtype(t, &PyTuple_Type) || t->tp_alloc == NULL) {
        PyErr_SetString(PyExc_TypeError, "nvs_tuple_alloc: not a tuple subclass");
        return NULL;
    }
    return t->tp_alloc(t, n);
}

/*
 * Stop the cyclic GC from tracking a filled NamedTuple whose items are immutable values (str,
 * int, float, None, tuples and frozen objects of those): nothing reachable from it can refer
 * back to it, so it can never be part of a reference cycle. CPython untracks plain tuples of
 * atomics for the same reason; it cannot do so for tuple subclasses, and a decoder that returns
 * thousands of events otherwise spends a third of its time in GC passes over them.
 */
static inline void nvs_untrack(PyObject *obj)
{
    if (PyObject_GC_IsTracked(obj))
        PyObject_GC_UnTrack(obj);
}

#endif /* NVSENTINEL_NAMEDTUPLE_H */
