/*
 * Append-only JSON writer (see sep_json.h).
 */
#include "shared/sep_json.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "shared/sep_options.h"

void sep_jw_init(sep_json_writer_t *w, char *buf, size_t cap)
{
    w->start = buf;
    w->pos = buf;
    w->end = buf + cap;
    w->overflow = 0;
}

size_t sep_jw_length(const sep_json_writer_t *w)
{
    return (size_t)(w->pos - w->start);
}

void sep_jw_lit(sep_json_writer_t *w, const char *cstr)
{
    sep_jw_raw(w, cstr, strlen(cstr));
}

size_t sep_jw_string_bound(size_t len)
{
    return 2 + 6 * len;
}

/* Length of the valid UTF-8 sequence at p (1..4), or 0 when it is not valid
 * (overlong forms, surrogates and code points past U+10FFFF included). */
static size_t sep_utf8_sequence(const unsigned char *p, size_t avail)
{
    unsigned char c = p[0];
    size_t n;
    unsigned cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (avail < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

void sep_jw_string(sep_json_writer_t *w, sep_str_t s)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s.ptr;
    size_t i = 0;

    sep_jw_raw(w, "\"", 1);
    while (i < s.len && !w->overflow) {
        /* Copy the longest run that needs no escaping in one go. */
        size_t run = i;
        while (run < s.len && p[run] >= 0x20 && p[run] < 0x80 && p[run] != '"' && p[run] != '\\')
            run++;
        if (run > i) {
            sep_jw_raw(w, (const char *)p + i, run - i);
            i = run;
            continue;
        }
        unsigned char c = p[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            sep_jw_raw(w, esc, 2);
            i++;
        } else if (c < 0x20) {
            char esc[6];
            size_t n = 2;
            esc[0] = '\\';
            switch (c) {
            case '\n':
                esc[1] = 'n';
                break;
            case '\r':
                esc[1] = 'r';
                break;
            case '\t':
                esc[1] = 't';
                break;
            case '\b':
                esc[1] = 'b';
                break;
            case '\f':
                esc[1] = 'f';
                break;
            default:
                esc[1] = 'u';
                esc[2] = '0';
                esc[3] = '0';
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 0xf];
                n = 6;
            }
            sep_jw_raw(w, esc, n);
            i++;
        } else {
            size_t n = sep_utf8_sequence(p + i, s.len - i);
            if (n == 0) {
                sep_jw_raw(w, "\\ufffd", 6);
                i++;
            } else {
                sep_jw_raw(w, (const char *)p + i, n);
                i += n;
            }
        }
    }
    sep_jw_raw(w, "\"", 1);
}

void sep_jw_key(sep_json_writer_t *w, const char *name)
{
    sep_jw_raw(w, "\"", 1);
    sep_jw_lit(w, name);
    sep_jw_raw(w, "\":", 2);
}

/* Digits of v, right-aligned in tmp[24]; returns where they start. */
static char *sep_format_ll(char tmp[24], long long v)
{
    char *p = tmp + 24;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--p = '-';
    return p;
}

void sep_jw_int(sep_json_writer_t *w, long long v)
{
    char tmp[24];
    char *p = sep_format_ll(tmp, v);
    sep_jw_raw(w, p, (size_t)(tmp + 24 - p));
}

void sep_jw_double(sep_json_writer_t *w, double v)
{
    if (!isfinite(v)) {
        sep_jw_null(w);
        return;
    }
    /* Whole numbers (progress 0 and 1, counts, rates) skip printf. The range test comes
     * first: casting a double outside long long's range is undefined. */
    if (v > -1e15 && v < 1e15 && v == (double)(long long)v) {
        sep_jw_int(w, (long long)v);
        return;
    }
    char tmp[32];
    size_t n = sep_format_double(tmp, sizeof(tmp), v);
    sep_jw_raw(w, tmp, n);
}

void sep_jw_bool(sep_json_writer_t *w, int v)
{
    sep_jw_lit(w, v ? "true" : "false");
}

void sep_jw_null(sep_json_writer_t *w)
{
    sep_jw_raw(w, "null", 4);
}

size_t sep_json_error(char *buf, size_t cap, const char *code, sep_str_t message)
{
    sep_json_writer_t w;
    sep_jw_init(&w, buf, cap);
    sep_jw_lit(&w, "{\"error\":{\"code\":");
    sep_jw_string(&w, sep_str_from_cstr(code));
    sep_jw_lit(&w, ",\"message\":");
    sep_jw_string(&w, message);
    sep_jw_lit(&w, "}}\n");
    return w.overflow ? 0 : sep_jw_length(&w);
}
