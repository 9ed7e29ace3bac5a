# CPython declarations Cython does not carry: frame access across 3.10-3.13, for recording where
# a lock was taken cheaply (the code object and instruction offset now, the line only when asked),
# and filesystem-encoding decoding.


cdef extern from *:
    """
    #include <Python.h>
    #include <frameobject.h>

    /* Byte offset of the instruction frame is executing. */
    static inline int lw_frame_lasti(PyFrameObject *frame)
    {
    #if PY_VERSION_HEX >= 0x030B0000
        return PyFrame_GetLasti(frame);
    #else
        return frame->f_lasti * (int) sizeof(_Py_CODEUNIT);
    #endif
    }
    """
    ctypedef struct PyFrameObject
    ctypedef struct PyCodeObject
    PyFrameObject *PyEval_GetFrame()
    object lw_frame_code "(PyObject *) PyFrame_GetCode"(PyFrameObject *frame)
    int lw_frame_lasti(PyFrameObject *frame)
    int PyCode_Addr2Line(PyCodeObject *code, int byte_offset)
    int PyErr_CheckSignals() except -1


cdef extern from "Python.h":
    ctypedef struct PyObject
    # Borrowed: this thread's dict for extension modules' per-thread state.
    PyObject *PyThreadState_GetDict()


cdef extern from "Python.h":
    object PyUnicode_DecodeFSDefault(const char *s)
    bytes PyUnicode_EncodeFSDefault(object unicode)
