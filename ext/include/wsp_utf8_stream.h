/* Incremental UTF-8 validation of a text message split over several frames (RFC 6455 §8.1).
 *
 * A fragment may end inside a character, so the bytes of an unfinished character (at most 3)
 * are carried to the next fragment. After each fragment the verdict is "the message so far can
 * begin a valid UTF-8 text", so a bad message fails on the fragment that breaks it, not at its
 * end; the message is whole-valid when the last fragment leaves nothing unfinished. The bulk of
 * every fragment goes through wsp_utf8_valid; only the few bytes at the seams are looked at here.
 * The pure-Python twin is _utf8_unfinished_tail in wsproxy/protocol/frames.py.
 */
#ifndef WSP_UTF8_STREAM_H
#define WSP_UTF8_STREAM_H

#include <stddef.h>
#include <string.h>

#include "wsp_utf8.h"

typedef struct {
    unsigned char tail[4];  /* an unfinished character: its lead byte, then continuation bytes */
    unsigned char len;      /* bytes in tail, 0..3 */
} wsp_utf8_stream;

/* Bytes of the character that lead byte c starts (2..4), 0 if c cannot start one. */
static inline size_t
wsp_utf8_sequence_length(unsigned char c)
{
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) return 3;
    if (c >= 0xF0 && c <= 0xF4) return 4;
    return 0;
}

/* 1 if s[0..n), shorter than the character its lead byte starts, can still end well. */
static inline int
wsp_utf8_partial_ok(const unsigned char *s, size_t n)
{
    size_t length = wsp_utf8_sequence_length(s[0]), k;
    unsigned char lo = 0x80, hi = 0xBF;

    if (length == 0 || n >= length)
        return 0;
    if (n >= 2) {  /* the same narrower second-byte ranges as wsp_utf8_valid */
        if (s[0] == 0xE0) lo = 0xA0;
        else if (s[0] == 0xED) hi = 0x9F;
        else if (s[0] == 0xF0) lo = 0x90;
        else if (s[0] == 0xF4) hi = 0x8F;
        if (s[1] < lo || s[1] > hi)
            return 0;
    }
    for (k = 2; k < n; k++)
        if ((s[k] & 0xC0) != 0x80)
            return 0;
    return 1;
}

/* Feed the next fragment s[0..n): 1 while the text so far can still be valid, 0 once not.
 * Zero the state (len = 0) at the start of a message; at its end, len != 0 means it stopped
 * inside a character. */
static inline int
wsp_utf8_stream_feed(wsp_utf8_stream *st, const unsigned char *s, size_t n)
{
    size_t length, take, cut, back;
    unsigned char c;

    if (st->len) {  /* finish the character the previous fragment began */
        length = wsp_utf8_sequence_length(st->tail[0]);
        take = length - st->len;
        if (take > n)
            take = n;
        memcpy(st->tail + st->len, s, take);
        st->len += (unsigned char)take;
        s += take;
        n -= take;
        if (st->len < length)
            return wsp_utf8_partial_ok(st->tail, st->len);
        if (!wsp_utf8_valid(st->tail, length))
            return 0;
        st->len = 0;
    }
    /* Where an unfinished character at the end begins: a lead byte in the last 3 bytes whose
     * character needs more than what follows it. Anything else is for wsp_utf8_valid to judge. */
    cut = n;
    for (back = 1; back <= 3 && back <= n; back++) {
        c = s[n - back];
        if (c < 0x80)
            break;
        if (c >= 0xC0) {
            if (back < wsp_utf8_sequence_length(c))
                cut = n - back;
            break;
        }
    }
    if (!wsp_utf8_valid(s, cut))
        return 0;
    if (cut < n) {
        if (!wsp_utf8_partial_ok(s + cut, n - cut))
            return 0;
        memcpy(st->tail, s + cut, n - cut);
        st->len = (unsigned char)(n - cut);
    }
    return 1;
}

#endif /* WSP_UTF8_STREAM_H */
