#ifndef NVSENTINEL_XID_SCAN_H
#define NVSENTINEL_XID_SCAN_H
/*
 * Anchor scanning for the compiled XID decoder (csrc/_xid_c.pyx).
 *
 * Why C: SPEC §9 asks the decoder to run within 5x of bytes.count(b"\n") on a kernel log where
 * 1 % of the lines matter. That means the decoder must skip the other 99 % without looking at
 * them line by line: it scans the whole buffer for the three anchors ("NVRM: ", "SXid (",
 * "GPU reset executed: ") 16 bytes at a time with SSE2 compares, which Cython cannot express.
 * A scalar loop does the same where SSE2 is missing (and for the last bytes of a buffer).
 *
 * Filter: a byte pair that occurs in exactly one anchor ("VR" of NVRM, "Xi" of SXid, "U " of
 * "GPU reset"); every hit is verified with memcmp before it counts, so the filter only decides
 * speed, never results. An anchor only selects the line to parse: the rules then match at the
 * start of the line's message alone (after its header), so an anchor anywhere else in the line,
 * text that a kernel message echoed, decodes to nothing.
 */
#include <stddef.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

static const char XID_ANCHOR_NVRM[] = "NVRM: ";               /* 6 bytes, pair "VR" at +1 */
static const char XID_ANCHOR_SXID[] = "SXid (";               /* 6 bytes, pair "Xi" at +1 */
static const char XID_ANCHOR_RESET[] = "GPU reset executed: ";  /* 20 bytes, pair "U " at +2 */

/* The anchor whose filter pair starts at s[q], if its full text is in s[lo:n]: its start, or -1. */
static inline ptrdiff_t xid_verify(const unsigned char *s, ptrdiff_t q, ptrdiff_t lo, ptrdiff_t n)
{
    ptrdiff_t a;
    switch (s[q]) {
    case 'V':
        a = q - 1;
        if (s[q + 1] == 'R' && a >= lo && a + 6 <= n && memcmp(s + a, XID_ANCHOR_NVRM, 6) == 0)
            return a;
        break;
    case 'X':
        a = q - 1;
        if (s[q + 1] == 'i' && a >= lo && a + 6 <= n && memcmp(s + a, XID_ANCHOR_SXID, 6) == 0)
            return a;
        break;
    case 'U':
        a = q - 2;
        if (s[q + 1] == ' ' && a >= lo && a + 20 <= n && memcmp(s + a, XID_ANCHOR_RESET, 20) == 0)
            return a;
        break;
    }
    return -1;
}

/* Offset of the first anchor that starts at or after `lo` in s[0:n] (anchors found in the order
   of their filter pairs, which is their order in the text), or -1 when there is none. */
static inline ptrdiff_t xid_next_anchor(const unsigned char *s, ptrdiff_t lo, ptrdiff_t n)
{
    ptrdiff_t i = lo, a;
#if defined(__SSE2__)
    const __m128i cV = _mm_set1_epi8('V'), cR = _mm_set1_epi8('R');
    const __m128i cX = _mm_set1_epi8('X'), ci = _mm_set1_epi8('i');
    const __m128i cU = _mm_set1_epi8('U'), csp = _mm_set1_epi8(' ');
    /* each round reads s[i:i+17]: 16 pair starts and the second byte of the last pair */
    while (i + 17 <= n) {
        const __m128i b0 = _mm_loadu_si128((const __m128i *)(s + i));
        const __m128i b1 = _mm_loadu_si128((const __m128i *)(s + i + 1));
        const __m128i hit = _mm_or_si128(
            _mm_or_si128(_mm_and_si128(_mm_cmpeq_epi8(b0, cV), _mm_cmpeq_epi8(b1, cR)),
                         _mm_and_si128(_mm_cmpeq_epi8(b0, cX), _mm_cmpeq_epi8(b1, ci))),
            _mm_and_si128(_mm_cmpeq_epi8(b0, cU), _mm_cmpeq_epi8(b1, csp)));
        unsigned int mask = (unsigned int)_mm_movemask_epi8(hit);
        while (mask != 0) {
            a = xid_verify(s, i + __builtin_ctz(mask), lo, n);
            if (a >= 0)
                return a;
            mask &= mask - 1;
        }
        i += 16;
    }
#endif
    for (; i + 1 < n; i++) {
        a = xid_verify(s, i, lo, n);
        if (a >= 0)
            return a;
    }
    return -1;
}

/* First occurrence of lit[0:len] in s[i:n], or -1 (memmem is not portable; lines are short). */
static inline ptrdiff_t xid_find(const unsigned char *s, ptrdiff_t i, ptrdiff_t n, const char *lit,
                                 ptrdiff_t len)
{
    const unsigned char *q;
    if (len <= 0)
        return i <= n ? i : -1;
    while (i + len <= n) {
        q = (const unsigned char *)memchr(s + i, (unsigned char)lit[0], (size_t)(n - len + 1 - i));
        if (q == NULL)
            return -1;
        i = q - s;
        if (memcmp(q, lit, (size_t)len) == 0)
            return i;
        i++;
    }
    return -1;
}

/* Last occurrence of lit[0:len] in s[i:n], or -1. */
static inline ptrdiff_t xid_rfind(const unsigned char *s, ptrdiff_t i, ptrdiff_t n, const char *lit,
                                  ptrdiff_t len)
{
    ptrdiff_t j;
    for (j = n - len; j >= i; j--) {
        if (s[j] == (unsigned char)lit[0] && memcmp(s + j, lit, (size_t)len) == 0)
            return j;
    }
    return -1;
}

#endif /* NVSENTINEL_XID_SCAN_H */
