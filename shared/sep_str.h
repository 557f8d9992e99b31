/*
 * sep_str_t: a non-owning view of bytes (pointer + length), not NUL-terminated.
 *
 * Most strings the service handles already live in someone else's buffer (a hiredis
 * reply, an nginx request, a jansson value); shared/ code points into them instead
 * of copying. Whoever fills a view says how long the bytes stay valid.
 */
#ifndef SEP_STR_H
#define SEP_STR_H

#include <stddef.h>
#include <string.h>

typedef struct sep_str {
    const char *ptr;
    size_t len;
} sep_str_t;

#define SEP_STR(literal) ((sep_str_t){(literal), sizeof(literal) - 1})
#define SEP_STR_NULL ((sep_str_t){NULL, 0})

static inline sep_str_t sep_str_from_cstr(const char *s)
{
    return (sep_str_t){s, s ? strlen(s) : 0};
}

/* A view is "set" when it points somewhere, even at zero bytes. */
static inline int sep_str_is_set(sep_str_t s)
{
    return s.ptr != NULL;
}

static inline int sep_str_eq(sep_str_t a, const char *cstr)
{
    size_t n = strlen(cstr);
    return a.ptr != NULL && a.len == n && memcmp(a.ptr, cstr, n) == 0;
}

#endif
