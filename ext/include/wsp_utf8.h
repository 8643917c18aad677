/* Strict UTF-8 validation (RFC 3629), as Python's bytes.decode("utf-8") in strict mode:
 * no overlong forms, no surrogates (U+D800..U+DFFF), nothing above U+10FFFF.
 * Used for Close reasons, which RFC 6455 §5.5.1 requires to be valid UTF-8, and (through
 * wsp_utf8_stream.h) for text messages: MessageAssembler, FrameTracker with validate_utf8.
 */
#ifndef WSP_UTF8_H
#define WSP_UTF8_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline int
wsp_utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0, k, tail;
    unsigned char c, lo, hi;
    uint64_t word;

    while (i < n) {
        /* ASCII runs 8 bytes at a time (text messages are mostly ASCII: JSON and the like);
           memcpy keeps the load alignment-safe. */
        while (i + 8 <= n) {
            memcpy(&word, s + i, 8);
            if (word & UINT64_C(0x8080808080808080))
                break;
            i += 8;
        }
        if (i >= n)
            break;
        c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        /* The second byte's range is narrower after a few lead bytes (Unicode table 3-7). */
        lo = 0x80;
        hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF)      tail = 1;
        else if (c == 0xE0)              { tail = 2; lo = 0xA0; }  /* no overlongs */
        else if (c == 0xED)              { tail = 2; hi = 0x9F; }  /* no surrogates */
        else if (c >= 0xE1 && c <= 0xEF) tail = 2;
        else if (c == 0xF0)              { tail = 3; lo = 0x90; }  /* no overlongs */
        else if (c == 0xF4)              { tail = 3; hi = 0x8F; }  /* <= U+10FFFF */
        else if (c >= 0xF1 && c <= 0xF3) tail = 3;
        else
            return 0;
        if (n - i - 1 < tail)
            return 0;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return 0;
        for (k = 2; k <= tail; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
        i += tail + 1;
    }
    return 1;
}

#endif /* WSP_UTF8_H */
