# C interface of wsproxy._ext.http_head: the compiled twin of wsproxy.protocol.http_head.
#
# Two tables drive every check: TOKEN (RFC 9110 tchar, for header names and the bytes a
# name may hold) and LOWER (ASCII lowercasing, for the names every lookup uses). The public
# functions, scan_fields and rewrite_head, are plain def functions (see http_head.pyi);
# what other Cython modules may cimport is below.

cdef bint TOKEN[256]
cdef unsigned char LOWER[256]

# True when s[0:n] is a non-empty token.
cdef bint _is_token(const unsigned char *s, Py_ssize_t n) noexcept nogil
# True when s[0:n] holds NUL, CR or LF (a value that could split a message).
cdef bint _has_bad_value_char(const unsigned char *s, Py_ssize_t n) noexcept nogil
