# cython: language_level=3
"""HTTP head glue, compiled twin of ``wsproxy.protocol.http_head`` (same names, same results,
same errors; the pure module's docstring is the specification).

Why C here: a WebSocket handshake parses two heads and writes two, and in Python each field
costs a dozen bytecode-level calls (decode, rstrip, lower, two regexes, tuple and list
building). Here each field is one pass over its bytes with table lookups, and a rewritten head
is measured first and then copied into one bytes object, with no intermediate strings.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeLatin1
from libc.string cimport memcpy

from wsproxy.protocol import http_head as _pure

__all__ = ["scan_fields", "rewrite_head"]

cdef extern from "Python.h":
    int PyUnicode_KIND(object s)
    void *PyUnicode_DATA(object s)
    Py_ssize_t PyUnicode_GET_LENGTH(object s)
    bint PyUnicode_IS_COMPACT_ASCII(object s)
    bint PyUnicode_CheckExact(object s)
    bint PyTuple_CheckExact(object o)
    bint PyBytes_CheckExact(object o)
    int PyUnicode_1BYTE_KIND

# TOKEN, LOWER and the helpers' signatures are declared in wsproxy/_ext/http_head.pxd.

cdef void _init_tables() noexcept:
    cdef int c
    for c in range(256):
        TOKEN[c] = (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c in b"!#$%&'*+-.^_`|~"
        LOWER[c] = c + 32 if 65 <= c <= 90 else c


_init_tables()


cdef bint _is_token(const unsigned char *s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    if n == 0:
        return False
    for i in range(n):
        if not TOKEN[s[i]]:
            return False
    return True


cdef bint _has_bad_value_char(const unsigned char *s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(n):
        c = s[i]
        if c == 0 or c == 13 or c == 10:
            return True
    return False


def scan_fields(list fields):
    """(headers, lowercased names, first problem or None, wire bytes of the fields)."""
    cdef Py_ssize_t count = PyList_GET_SIZE(fields)
    cdef Py_ssize_t i, j, name_len, value_len
    cdef const unsigned char *name_p
    cdef const unsigned char *value_p
    cdef unsigned char lowered[256]
    cdef bytearray long_lowered
    cdef list headers = [None] * count
    cdef list names = [None] * count
    cdef object pair, raw_name, raw_value, name
    cdef object problem = None
    cdef Py_ssize_t size = 0
    for i in range(count):
        pair = <object>PyList_GET_ITEM(fields, i)
        if not PyTuple_CheckExact(pair) or PyTuple_GET_SIZE(pair) != 2:
            return _pure.scan_fields(fields)  # not what llhttp gives: the reference decides
        raw_name = <object>PyTuple_GET_ITEM(pair, 0)
        raw_value = <object>PyTuple_GET_ITEM(pair, 1)
        if not PyBytes_CheckExact(raw_name) or not PyBytes_CheckExact(raw_value):
            return _pure.scan_fields(fields)
        name_p = <const unsigned char *>PyBytes_AS_STRING(raw_name)
        name_len = PyBytes_GET_SIZE(raw_name)
        value_p = <const unsigned char *>PyBytes_AS_STRING(raw_value)
        value_len = PyBytes_GET_SIZE(raw_value)
        size += name_len + value_len + 3
        while value_len > 0 and (value_p[value_len - 1] == 32 or value_p[value_len - 1] == 9):
            value_len -= 1
        name = PyUnicode_DecodeLatin1(<const char *>name_p, name_len, NULL)
        headers[i] = (name, PyUnicode_DecodeLatin1(<const char *>value_p, value_len, NULL))
        if name_len <= 256:
            for j in range(name_len):
                lowered[j] = LOWER[name_p[j]]
            names[i] = PyUnicode_DecodeLatin1(<const char *>lowered, name_len, NULL)
        else:
            long_lowered = bytearray(name_len)
            for j in range(name_len):
                long_lowered[j] = LOWER[name_p[j]]
            names[i] = PyUnicode_DecodeLatin1(<const char *>(<char *>long_lowered), name_len, NULL)
        if problem is None:
            if not _is_token(name_p, name_len):
                problem = f"invalid header name {name!r}"
            elif _has_bad_value_char(value_p, value_len):
                problem = f"invalid character in header {name!r}"
    return headers, tuple(names), problem, size


cdef inline bint _latin1(object s):
    return PyUnicode_CheckExact(s) and PyUnicode_KIND(s) == PyUnicode_1BYTE_KIND


cdef inline Py_ssize_t _field_size(object field) except -2:
    """Wire size of "name: value\\r\\n"; -1 when the field is not two latin-1 strings."""
    cdef object name, value
    if not PyTuple_CheckExact(field) or PyTuple_GET_SIZE(field) != 2:
        return -1
    name = <object>PyTuple_GET_ITEM(field, 0)
    value = <object>PyTuple_GET_ITEM(field, 1)
    if not _latin1(name) or not _latin1(value):
        return -1
    return PyUnicode_GET_LENGTH(name) + PyUnicode_GET_LENGTH(value) + 4


cdef inline Py_ssize_t _put_field(char *out, Py_ssize_t pos, object field) except -1:
    cdef object name = <object>PyTuple_GET_ITEM(field, 0)
    cdef object value = <object>PyTuple_GET_ITEM(field, 1)
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(name)
    cdef Py_ssize_t v = PyUnicode_GET_LENGTH(value)
    cdef const unsigned char *np = <const unsigned char *>PyUnicode_DATA(name)
    cdef const unsigned char *vp = <const unsigned char *>PyUnicode_DATA(value)
    if not _is_token(np, n):
        raise ValueError(f"invalid header name {name!r}")
    if _has_bad_value_char(vp, v):
        raise ValueError(f"CR, LF or NUL in the value of header {name!r}")
    memcpy(out + pos, np, n)
    pos += n
    out[pos] = b':'
    out[pos + 1] = b' '
    pos += 2
    memcpy(out + pos, vp, v)
    pos += v
    out[pos] = b'\r'
    out[pos + 1] = b'\n'
    return pos + 2


def rewrite_head(str start_line, headers, names, drop, tail=(), first=None):
    """``start_line`` CRLF, ``first``, the headers whose name (lowercased, from ``names``) is
    not in ``drop``, ``tail``, CRLF: latin-1 bytes. ValueError on a field that could split
    the message."""
    cdef Py_ssize_t count, i, total, pos, n
    cdef list kept
    cdef object field
    if (type(headers) is not list or type(names) is not tuple or type(tail) not in (list, tuple)
            or not _latin1(start_line)):
        return _pure.rewrite_head(start_line, headers, names, drop, tail, first)
    count = PyList_GET_SIZE(headers)
    if PyTuple_GET_SIZE(names) != count:
        return _pure.rewrite_head(start_line, headers, names, drop, tail, first)  # its error
    # Pass 1: choose the fields and measure them.
    kept = []
    total = PyUnicode_GET_LENGTH(start_line) + 4
    if first is not None:
        kept.append(first)
    for i in range(count):
        if <object>PyTuple_GET_ITEM(names, i) not in drop:
            kept.append(<object>PyList_GET_ITEM(headers, i))
    kept.extend(tail)
    for field in kept:
        n = _field_size(field)
        if n < 0:  # not latin-1 strings: the reference raises the right error
            return _pure.rewrite_head(start_line, headers, names, drop, tail, first)
        total += n
    # Pass 2: copy into the one buffer.
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef char *p = PyBytes_AS_STRING(out)
    n = PyUnicode_GET_LENGTH(start_line)
    memcpy(p, PyUnicode_DATA(start_line), n)
    p[n] = b'\r'
    p[n + 1] = b'\n'
    pos = n + 2
    for field in kept:
        pos = _put_field(p, pos, field)
    p[pos] = b'\r'
    p[pos + 1] = b'\n'
    return out
