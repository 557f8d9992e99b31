/*
 * UUIDv4 job ids (see sep_id.h): 16 random bytes with the version (4) and variant
 * (10xx) bits set, printed as lowercase hex in 8-4-4-4-12 groups.
 */
#include "shared/sep_id.h"

#include <errno.h>
#include <sys/random.h>

static const char sep_hex_digits[] = "0123456789abcdef";

static int sep_random_bytes(unsigned char *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = getrandom(buf + got, len - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        got += (size_t)n;
    }
    return 0;
}

int sep_id_generate(char out[SEP_ID_LEN + 1])
{
    unsigned char raw[16];
    if (sep_random_bytes(raw, sizeof(raw)) != 0)
        return -1;
    raw[6] = (unsigned char)((raw[6] & 0x0f) | 0x40); /* version 4 */
    raw[8] = (unsigned char)((raw[8] & 0x3f) | 0x80); /* RFC 4122 variant */

    char *p = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *p++ = '-';
        *p++ = sep_hex_digits[raw[i] >> 4];
        *p++ = sep_hex_digits[raw[i] & 0x0f];
    }
    *p = '\0';
    return 0;
}

static int sep_is_lower_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

int sep_id_valid(const char *s, size_t len)
{
    if (s == NULL || len != SEP_ID_LEN)
        return 0;
    for (size_t i = 0; i < SEP_ID_LEN; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return 0;
        } else if (!sep_is_lower_hex(s[i])) {
            return 0;
        }
    }
    if (s[14] != '4')
        return 0;
    return s[19] == '8' || s[19] == '9' || s[19] == 'a' || s[19] == 'b';
}
