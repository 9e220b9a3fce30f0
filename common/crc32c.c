/* crc32c.c - CRC-32C (crc32c.h): the SSE4.2 instruction where the build
 * targets it, else a table, one byte at a time. */
#include "common/crc32c.h"

#include <pthread.h>
#include <string.h>

#if defined(__SSE4_2__) && defined(__x86_64__)
#include <nmmintrin.h>

uint32_t crc32c(uint32_t crc, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    uint64_t c = ~crc;
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
    }
    uint32_t c32 = (uint32_t)c;
    for (; n; p++, n--)
        c32 = _mm_crc32_u8(c32, *p);
    return ~c32;
}

#else

static uint32_t s_table[256];
static pthread_once_t s_once = PTHREAD_ONCE_INIT;

static void s_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        s_table[i] = c;
    }
}

uint32_t crc32c(uint32_t crc, const void *buf, size_t n)
{
    pthread_once(&s_once, s_init);
    const unsigned char *p = buf;
    uint32_t c = ~crc;
    for (; n; p++, n--)
        c = s_table[(c ^ *p) & 0xff] ^ (c >> 8);
    return ~c;
}

#endif
