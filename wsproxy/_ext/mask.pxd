# C interface of wsproxy._ext.mask. The loop itself lives in ext/include/wsp_mask.h, so other
# ext modules share the C code through the header, never by cimporting this module.
# It lives here, not in ext/, because Cython finds a module's .pxd by its dotted name
# (wsproxy._ext.mask -> wsproxy/_ext/mask.pxd; dotted file names in ext/ are deprecated).

cdef extern from "wsp_mask.h":
    # dst[i] = src[i] ^ key[(phase + i) % 4]; dst may equal src.
    void wsp_mask(const unsigned char *src, unsigned char *dst, size_t n,
                  const unsigned char *key, size_t phase) nogil
