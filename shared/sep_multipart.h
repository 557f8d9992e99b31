/*
 * Streaming multipart/form-data parser (RFC 7578 on RFC 2046's multipart syntax).
 *
 * The body is fed in arbitrary chunks (sep_multipart_feed); nothing of it is kept
 * except one part's header block (bounded by the caller's header buffer) and the
 * few delimiter bytes that may straddle two chunks. For every part the parser calls
 *
 *   part_begin(user, part)   name, filename and content type from the part headers
 *   part_data(user, p, n)    the part's content, in pieces (possibly many, possibly
 *                            zero bytes in total); pieces never include delimiter
 *                            bytes, even when a delimiter is split across chunks
 *   part_end(user)           the part is complete
 *
 * A callback returning non-zero aborts parsing (SEP_MULTIPART_ABORTED).
 *
 * Syntax handled: a preamble before the first delimiter (or none: the body may begin
 * with "--boundary"), transport padding (spaces/tabs) after a delimiter, parts with
 * or without headers, the close delimiter "--boundary--" and an epilogue after it
 * (ignored). The delimiter is CRLF "--" boundary; a boundary contains no CR, so a
 * failed partial match never hides the start of another match except at a CR, which
 * keeps the matcher a simple counter.
 */
#ifndef SEP_MULTIPART_H
#define SEP_MULTIPART_H

#include <stddef.h>

#include "shared/sep_str.h"

#define SEP_MULTIPART_BOUNDARY_MAX 70 /* RFC 2046 */

typedef struct sep_multipart_part {
    sep_str_t name;         /* the form field name */
    sep_str_t filename;     /* unset (ptr NULL) when the part has no filename */
    sep_str_t content_type; /* unset when the part has no Content-Type */
} sep_multipart_part_t;

typedef struct sep_multipart_callbacks {
    int (*part_begin)(void *user, const sep_multipart_part_t *part);
    int (*part_data)(void *user, const char *data, size_t len);
    int (*part_end)(void *user);
} sep_multipart_callbacks_t;

typedef enum sep_multipart_status {
    SEP_MULTIPART_OK = 0,
    SEP_MULTIPART_ERROR = -1,   /* malformed body: see sep_multipart_error() */
    SEP_MULTIPART_ABORTED = -2, /* a callback returned non-zero */
} sep_multipart_status_t;

typedef struct sep_multipart {
    char delimiter[4 + SEP_MULTIPART_BOUNDARY_MAX]; /* "\r\n--" boundary */
    size_t delimiter_len;
    const sep_multipart_callbacks_t *callbacks;
    void *user;

    char *header;      /* caller's buffer for one part's header block */
    size_t header_cap; /* its size: the limit of a header block */
    size_t header_len;

    int state;
    size_t match;   /* delimiter bytes matched so far */
    int in_part;    /* a part has begun and not ended */
    unsigned parts; /* parts begun so far */
    const char *error;
} sep_multipart_t;

/*
 * Extracts the boundary parameter of a "multipart/form-data; boundary=..." media
 * type (quoted or not). Returns 0 with *boundary pointing into content_type, or -1
 * when the type is not multipart/form-data or the boundary is missing or invalid.
 */
int sep_multipart_boundary(sep_str_t content_type, sep_str_t *boundary);

/* 1 when the media type (parameters ignored) is multipart/form-data. */
int sep_multipart_is_form_data(sep_str_t content_type);

/* Prepares a parser. header_buf (header_cap bytes, at least 64) holds one part's
 * headers at a time and must outlive the parser. Returns 0, or -1 for a bad
 * boundary. */
int sep_multipart_init(sep_multipart_t *mp, sep_str_t boundary, char *header_buf, size_t header_cap,
                       const sep_multipart_callbacks_t *callbacks, void *user);

/* Feeds the next chunk of the body. */
sep_multipart_status_t sep_multipart_feed(sep_multipart_t *mp, const char *data, size_t len);

/* Call after the last chunk: an error unless the close delimiter was seen. */
sep_multipart_status_t sep_multipart_finish(sep_multipart_t *mp);

/* Why the parser failed (a sentence for the client), or NULL. */
const char *sep_multipart_error(const sep_multipart_t *mp);

#endif
