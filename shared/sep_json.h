/*
 * A small append-only JSON writer into a caller buffer.
 *
 * The hot paths (job status answers) render JSON straight into memory the caller
 * owns (an nginx pool buffer), without building a tree of heap objects first. The
 * writer never writes past the end: once something does not fit it stops and
 * reports overflow, and the caller retries with a larger buffer. Strings are
 * escaped per RFC 8259 and invalid UTF-8 is replaced with U+FFFD, so what comes out
 * always parses.
 */
#ifndef SEP_JSON_H
#define SEP_JSON_H

#include <stddef.h>

#include "shared/sep_str.h"

typedef struct sep_json_writer {
    char *start;
    char *pos;
    char *end;
    int overflow;
} sep_json_writer_t;

void sep_jw_init(sep_json_writer_t *w, char *buf, size_t cap);
size_t sep_jw_length(const sep_json_writer_t *w);

/* Appends bytes as they are (inline: the renderer calls it for every piece). */
static inline void sep_jw_raw(sep_json_writer_t *w, const char *bytes, size_t len)
{
    if (w->overflow || (size_t)(w->end - w->pos) < len) {
        w->overflow = 1;
        return;
    }
    memcpy(w->pos, bytes, len);
    w->pos += len;
}

void sep_jw_lit(sep_json_writer_t *w, const char *cstr); /* raw, NUL-terminated */
void sep_jw_string(sep_json_writer_t *w, sep_str_t s);   /* quoted and escaped */
void sep_jw_key(sep_json_writer_t *w, const char *name); /* "name": (name is plain) */
void sep_jw_int(sep_json_writer_t *w, long long v);
void sep_jw_double(sep_json_writer_t *w, double v); /* shortest exact; NaN -> null */
void sep_jw_bool(sep_json_writer_t *w, int v);
void sep_jw_null(sep_json_writer_t *w);

/* The same for string literals, without a strlen at run time. */
#define SEP_JW_LIT(w, lit) sep_jw_raw((w), "" lit, sizeof(lit) - 1)
#define SEP_JW_KEY(w, name) sep_jw_raw((w), "\"" name "\":", sizeof(name) + 2)
/* A member after the first of its object: the comma, then the key. */
#define SEP_JW_NEXT_KEY(w, name) sep_jw_raw((w), ",\"" name "\":", sizeof(name) + 3)

/* Worst-case size of s once quoted and escaped. */
size_t sep_jw_string_bound(size_t len);

/* Writes {"error": {"code": code, "message": message}} into buf; returns the length
 * or 0 when it does not fit. */
size_t sep_json_error(char *buf, size_t cap, const char *code, sep_str_t message);

#endif
