/*
 * fuzz_multipart.c - libFuzzer target over the streaming multipart/form-data parser
 * (shared/sep_multipart.c), which sees every multipart upload as it arrives.
 *
 * Input: the Content-Type value, '\n', then the body. The body is parsed once in one
 * piece and once fed in splits drawn from the input itself (1-byte pieces, pieces that
 * end inside a delimiter, ...); both runs must produce the same transcript (every part's
 * name, filename, content type, its bytes, its end) and the same outcome: the parse
 * must not depend on how the network cut the body. Each piece is a separate heap copy,
 * so ASan catches a read past its end.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/sep_multipart.h"

typedef struct {
    char *buf;
    size_t len, cap;
} transcript;

static void put(transcript *t, const void *p, size_t n)
{
    if (t->len + n > t->cap) {
        t->cap = (t->len + n) * 2 + 64;
        t->buf = realloc(t->buf, t->cap);
        if (!t->buf)
            abort();
    }
    memcpy(t->buf + t->len, p, n);
    t->len += n;
}

static void put_str(transcript *t, char tag, sep_str_t s)
{
    put(t, &tag, 1);
    if (s.ptr == NULL) {
        put(t, "-", 1);
        return;
    }
    put(t, &s.len, sizeof(s.len));
    put(t, s.ptr, s.len);
}

static int on_begin(void *user, const sep_multipart_part_t *part)
{
    transcript *t = user;
    put_str(t, 'N', part->name);
    put_str(t, 'F', part->filename);
    put_str(t, 'C', part->content_type);
    return 0;
}

static int on_data(void *user, const char *data, size_t len)
{
    put(user, data, len); /* pieces are concatenated: their cut is not part of the result */
    return 0;
}

static int on_end(void *user)
{
    put(user, "\0END", 4);
    return 0;
}

static const sep_multipart_callbacks_t callbacks = {on_begin, on_data, on_end};

static int parse(sep_str_t boundary, const uint8_t *body, size_t len, const size_t *cuts,
                 size_t ncuts, transcript *t)
{
    char header[256];
    sep_multipart_t mp;
    if (sep_multipart_init(&mp, boundary, header, sizeof(header), &callbacks, t) != 0)
        return 99;
    size_t at = 0;
    int status = SEP_MULTIPART_OK;
    for (size_t i = 0; i <= ncuts && status == SEP_MULTIPART_OK; i++) {
        size_t next = i < ncuts ? cuts[i] : len;
        char *piece = malloc(next - at + 1);
        if (!piece)
            abort();
        memcpy(piece, body + at, next - at);
        status = sep_multipart_feed(&mp, piece, next - at);
        free(piece);
        at = next;
    }
    if (status == SEP_MULTIPART_OK)
        status = sep_multipart_finish(&mp);
    if (status == SEP_MULTIPART_ERROR && !sep_multipart_error(&mp))
        abort(); /* an error names its reason */
    return status;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    if (!nl)
        return 0;
    sep_str_t ctype = {(const char *)data, (size_t)(nl - data)}, boundary;
    if (sep_multipart_boundary(ctype, &boundary) != 0)
        return 0;
    const uint8_t *body = nl + 1;
    size_t len = size - (size_t)(body - data);

    transcript whole = {0}, split = {0};
    int s1 = parse(boundary, body, len, NULL, 0, &whole);

    /* cut points from a small generator seeded by the input: many short pieces */
    size_t cuts[512], ncuts = 0, at = 0;
    uint32_t x = 2166136261u;
    for (size_t i = 0; i < size; i++)
        x = (x ^ data[i]) * 16777619u;
    while (ncuts < 512) {
        x = x * 1103515245u + 12345u;
        size_t step = 1 + ((x >> 16) % 9);
        if (at + step >= len)
            break;
        at += step;
        cuts[ncuts++] = at;
    }
    int s2 = parse(boundary, body, len, cuts, ncuts, &split);
    if (s1 != s2 || whole.len != split.len ||
        (whole.len && memcmp(whole.buf, split.buf, whole.len))) {
        fprintf(stderr, "the parse depends on the split: status %d vs %d, %zu vs %zu bytes\n", s1,
                s2, whole.len, split.len);
        abort();
    }
    free(whole.buf);
    free(split.buf);
    return 0;
}
