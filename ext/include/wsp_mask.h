/* XOR masking of WebSocket payloads (RFC 6455 §5.3), shared by ext/mask.pyx and ext/frames.pyx.
 *
 * The scalar loop works 8 bytes at a time: one uint64 holds the key stream for a whole step, and
 * since 8 is a multiple of 4 the key phase is the same at every step. memcpy keeps the loads
 * alignment- and endian-safe (compilers turn it into plain 64-bit moves).
 */
#ifndef WSP_MASK_H
#define WSP_MASK_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* dst[i] = src[i] ^ key[(phase + i) % 4] for i < n. dst may be src (in place). */
static inline void
wsp_mask(const unsigned char *src, unsigned char *dst, size_t n,
         const unsigned char *key, size_t phase)
{
    unsigned char stream[8];
    uint64_t key64, word;
    size_t i;

    for (i = 0; i < 8; i++)
        stream[i] = key[(phase + i) & 3];
    memcpy(&key64, stream, 8);

    for (i = 0; i + 8 <= n; i += 8) {
        memcpy(&word, src + i, 8);
        word ^= key64;
        memcpy(dst + i, &word, 8);
    }
    for (; i < n; i++)
        dst[i] = src[i] ^ key[(phase + i) & 3];
}

#endif /* WSP_MASK_H */
