/*
 * Streaming multipart/form-data parser (contract in sep_multipart.h).
 *
 * States:
 *   PREAMBLE      looking for the first delimiter; bytes are discarded. The matcher
 *                 starts with the delimiter's CRLF already "seen", so a body that
 *                 begins with "--boundary" matches at once.
 *   AFTER_DELIM   right after a delimiter: "--" closes the body; otherwise optional
 *                 spaces/tabs and CRLF start the next part's headers.
 *   HEADERS       collecting the part's header block up to the empty line.
 *   BODY          the part's content, streamed out through part_data, up to the
 *                 next delimiter.
 *   EPILOGUE      after the close delimiter; everything is ignored.
 *
 * Delimiter bytes matched at the end of one chunk are not emitted; if the match
 * then fails in the next chunk, they are emitted from the delimiter text itself
 * (they equal its first bytes), before the chunk's own data.
 */
#include "shared/sep_multipart.h"

#include <string.h>

enum {
    SEP_MP_PREAMBLE,
    SEP_MP_AFTER_DELIM,
    SEP_MP_AFTER_DELIM_DASH,
    SEP_MP_AFTER_DELIM_PAD,
    SEP_MP_AFTER_DELIM_CR,
    SEP_MP_HEADERS,
    SEP_MP_BODY,
    SEP_MP_EPILOGUE,
    SEP_MP_FAILED,
};

static char sep_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

static int sep_ieq(const char *a, size_t alen, const char *lit)
{
    size_t n = strlen(lit);
    if (alen != n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (sep_lower(a[i]) != lit[i])
            return 0;
    }
    return 1;
}

static int sep_is_space(char c)
{
    return c == ' ' || c == '\t';
}

/* RFC 2046 bchars: DIGIT / ALPHA / "'()+_,-./:=?" and space (not as the last). */
static int sep_boundary_char(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           strchr("'()+_,-./:=? ", c) != NULL;
}

static int sep_boundary_valid(sep_str_t b)
{
    if (b.ptr == NULL || b.len == 0 || b.len > SEP_MULTIPART_BOUNDARY_MAX)
        return 0;
    for (size_t i = 0; i < b.len; i++) {
        if (b.ptr[i] == '\0' || !sep_boundary_char(b.ptr[i]))
            return 0;
    }
    return b.ptr[b.len - 1] != ' ';
}

/* The media type before ';', trimmed. */
static sep_str_t sep_media_type(sep_str_t ct)
{
    size_t start = 0, end = 0;
    while (start < ct.len && sep_is_space(ct.ptr[start]))
        start++;
    end = start;
    while (end < ct.len && ct.ptr[end] != ';')
        end++;
    size_t stop = end;
    while (stop > start && sep_is_space(ct.ptr[stop - 1]))
        stop--;
    return (sep_str_t){ct.ptr + start, stop - start};
}

int sep_multipart_is_form_data(sep_str_t content_type)
{
    if (content_type.ptr == NULL)
        return 0;
    sep_str_t type = sep_media_type(content_type);
    return sep_ieq(type.ptr, type.len, "multipart/form-data");
}

int sep_multipart_boundary(sep_str_t ct, sep_str_t *boundary)
{
    if (!sep_multipart_is_form_data(ct))
        return -1;
    size_t i = 0;
    while (i < ct.len && ct.ptr[i] != ';')
        i++;
    /* parameters: ; name=value or ; name="quoted" */
    while (i < ct.len) {
        i++; /* the ';' */
        while (i < ct.len && sep_is_space(ct.ptr[i]))
            i++;
        size_t name_start = i;
        while (i < ct.len && ct.ptr[i] != '=' && ct.ptr[i] != ';')
            i++;
        size_t name_end = i;
        while (name_end > name_start && sep_is_space(ct.ptr[name_end - 1]))
            name_end--;
        if (i >= ct.len || ct.ptr[i] != '=')
            continue;
        i++;
        sep_str_t value;
        if (i < ct.len && ct.ptr[i] == '"') {
            size_t vstart = ++i;
            while (i < ct.len && ct.ptr[i] != '"')
                i++;
            if (i >= ct.len)
                return -1; /* unterminated quote */
            value = (sep_str_t){ct.ptr + vstart, i - vstart};
            i++;
            while (i < ct.len && ct.ptr[i] != ';')
                i++;
        } else {
            size_t vstart = i;
            while (i < ct.len && ct.ptr[i] != ';')
                i++;
            size_t vend = i;
            while (vend > vstart && sep_is_space(ct.ptr[vend - 1]))
                vend--;
            value = (sep_str_t){ct.ptr + vstart, vend - vstart};
        }
        if (sep_ieq(ct.ptr + name_start, name_end - name_start, "boundary")) {
            if (!sep_boundary_valid(value))
                return -1;
            *boundary = value;
            return 0;
        }
    }
    return -1;
}

int sep_multipart_init(sep_multipart_t *mp, sep_str_t boundary, char *header_buf, size_t header_cap,
                       const sep_multipart_callbacks_t *callbacks, void *user)
{
    memset(mp, 0, sizeof(*mp));
    if (!sep_boundary_valid(boundary) || header_buf == NULL || header_cap < 64)
        return -1;
    memcpy(mp->delimiter, "\r\n--", 4);
    memcpy(mp->delimiter + 4, boundary.ptr, boundary.len);
    mp->delimiter_len = 4 + boundary.len;
    mp->callbacks = callbacks;
    mp->user = user;
    mp->header = header_buf;
    mp->header_cap = header_cap;
    mp->state = SEP_MP_PREAMBLE;
    mp->match = 2; /* the CRLF before the first delimiter is optional */
    return 0;
}

static sep_multipart_status_t sep_mp_fail(sep_multipart_t *mp, const char *why)
{
    mp->state = SEP_MP_FAILED;
    mp->error = why;
    return SEP_MULTIPART_ERROR;
}

static sep_multipart_status_t sep_mp_abort(sep_multipart_t *mp)
{
    mp->state = SEP_MP_FAILED;
    mp->error = "the upload was refused while it was being read";
    return SEP_MULTIPART_ABORTED;
}

static int sep_mp_emit(sep_multipart_t *mp, const char *data, size_t len)
{
    if (len == 0 || mp->callbacks->part_data == NULL)
        return 0;
    return mp->callbacks->part_data(mp->user, data, len);
}

/*
 * Scans data for the delimiter (PREAMBLE and BODY). Returns the bytes consumed; on
 * a full match the state moves to AFTER_DELIM (and the part ends). *status is set
 * when a callback aborted.
 */
static size_t sep_mp_scan(sep_multipart_t *mp, const char *data, size_t len,
                          sep_multipart_status_t *status)
{
    const int emitting = mp->state == SEP_MP_BODY;
    const char *delim = mp->delimiter;
    const size_t dlen = mp->delimiter_len;
    size_t carried = mp->match; /* matched bytes that came from earlier chunks */
    size_t i = 0;

    while (i < len) {
        if (mp->match == 0) {
            const char *cr = memchr(data + i, '\r', len - i);
            if (cr == NULL) {
                i = len;
                break;
            }
            i = (size_t)(cr - data) + 1;
            mp->match = 1;
            continue;
        }
        if (data[i] == delim[mp->match]) {
            mp->match++;
            i++;
            if (mp->match < dlen)
                continue;
            /* Full delimiter: data before it is the part's last bytes. */
            size_t in_chunk = dlen - carried;
            if (emitting) {
                if (sep_mp_emit(mp, data, i - in_chunk) != 0) {
                    *status = sep_mp_abort(mp);
                    return i;
                }
                mp->in_part = 0;
                if (mp->callbacks->part_end && mp->callbacks->part_end(mp->user) != 0) {
                    *status = sep_mp_abort(mp);
                    return i;
                }
            }
            mp->match = 0;
            mp->state = SEP_MP_AFTER_DELIM;
            return i;
        }
        /* Mismatch: the matched bytes were content. Those carried from an earlier
         * chunk come first; the ones in this chunk are already in data[0..i). Only
         * a CR can start a new match, and it is re-examined below. */
        if (carried > 0) {
            if (emitting && sep_mp_emit(mp, delim, carried) != 0) {
                *status = sep_mp_abort(mp);
                return i;
            }
            carried = 0;
        }
        mp->match = 0;
        if (data[i] == '\r') {
            mp->match = 1;
            i++;
        }
    }
    /* End of chunk: emit everything except the bytes of a pending partial match
     * that lie in this chunk; they are carried to the next one. */
    if (emitting) {
        size_t held = mp->match - carried;
        if (sep_mp_emit(mp, data, len - held) != 0) {
            *status = sep_mp_abort(mp);
            return len;
        }
    }
    return len;
}

/* Unquotes a quoted-string in place (backslash escapes). */
static sep_str_t sep_unquote(char *p, size_t len)
{
    size_t out = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] == '\\' && i + 1 < len)
            i++;
        p[out++] = p[i];
    }
    return (sep_str_t){p, out};
}

/* Parses "form-data; name=...; filename=..." of one Content-Disposition value. */
static int sep_parse_disposition(char *v, size_t len, sep_multipart_part_t *part)
{
    size_t i = 0;
    while (i < len && v[i] != ';')
        i++;
    size_t type_end = i;
    while (type_end > 0 && sep_is_space(v[type_end - 1]))
        type_end--;
    if (!sep_ieq(v, type_end, "form-data"))
        return -1;
    while (i < len) {
        i++; /* ';' */
        while (i < len && sep_is_space(v[i]))
            i++;
        size_t key = i;
        while (i < len && v[i] != '=' && v[i] != ';' && !sep_is_space(v[i]))
            i++;
        size_t key_len = i - key;
        while (i < len && sep_is_space(v[i]))
            i++;
        if (i >= len || v[i] != '=') {
            while (i < len && v[i] != ';')
                i++;
            continue;
        }
        i++;
        while (i < len && sep_is_space(v[i]))
            i++;
        sep_str_t value;
        if (i < len && v[i] == '"') {
            size_t start = ++i;
            while (i < len && v[i] != '"') {
                if (v[i] == '\\' && i + 1 < len)
                    i++;
                i++;
            }
            if (i >= len)
                return -1;
            value = sep_unquote(v + start, i - start);
            i++;
        } else {
            size_t start = i;
            while (i < len && v[i] != ';' && !sep_is_space(v[i]))
                i++;
            value = (sep_str_t){v + start, i - start};
        }
        while (i < len && v[i] != ';')
            i++;
        if (sep_ieq(v + key, key_len, "name"))
            part->name = value;
        else if (sep_ieq(v + key, key_len, "filename"))
            part->filename = value;
    }
    return part->name.ptr != NULL ? 0 : -1;
}

/* Parses the collected header block (lines ending in CRLF, the last one empty). */
static int sep_parse_part_headers(sep_multipart_t *mp, sep_multipart_part_t *part)
{
    char *p = mp->header;
    size_t len = mp->header_len;
    size_t i = 0;
    int have_disposition = 0;
    memset(part, 0, sizeof(*part));
    while (i + 1 < len) {
        size_t line = i;
        while (i + 1 < len && !(p[i] == '\r' && p[i + 1] == '\n'))
            i++;
        size_t line_end = i;
        i += 2;
        if (line_end == line)
            break; /* the empty line */
        if (sep_is_space(p[line]))
            continue; /* obsolete line folding: continuation ignored */
        size_t colon = line;
        while (colon < line_end && p[colon] != ':')
            colon++;
        if (colon == line_end)
            return -1;
        size_t name_end = colon;
        while (name_end > line && sep_is_space(p[name_end - 1]))
            name_end--;
        size_t value = colon + 1;
        while (value < line_end && sep_is_space(p[value]))
            value++;
        size_t value_end = line_end;
        while (value_end > value && sep_is_space(p[value_end - 1]))
            value_end--;
        if (sep_ieq(p + line, name_end - line, "content-disposition")) {
            if (have_disposition || sep_parse_disposition(p + value, value_end - value, part))
                return -1;
            have_disposition = 1;
        } else if (sep_ieq(p + line, name_end - line, "content-type")) {
            part->content_type = (sep_str_t){p + value, value_end - value};
        }
    }
    return have_disposition ? 0 : -1;
}

sep_multipart_status_t sep_multipart_feed(sep_multipart_t *mp, const char *data, size_t len)
{
    sep_multipart_status_t status = SEP_MULTIPART_OK;
    size_t off = 0;

    if (mp->state == SEP_MP_FAILED)
        return SEP_MULTIPART_ERROR;

    while (off < len) {
        char c = data[off];
        switch (mp->state) {
        case SEP_MP_PREAMBLE:
        case SEP_MP_BODY:
            off += sep_mp_scan(mp, data + off, len - off, &status);
            if (status != SEP_MULTIPART_OK)
                return status;
            break;

        case SEP_MP_AFTER_DELIM:
            off++;
            if (c == '-')
                mp->state = SEP_MP_AFTER_DELIM_DASH;
            else if (sep_is_space(c))
                mp->state = SEP_MP_AFTER_DELIM_PAD;
            else if (c == '\r')
                mp->state = SEP_MP_AFTER_DELIM_CR;
            else
                return sep_mp_fail(mp, "malformed multipart body: a boundary is followed by "
                                       "neither CRLF nor \"--\"");
            break;

        case SEP_MP_AFTER_DELIM_DASH:
            off++;
            if (c != '-')
                return sep_mp_fail(mp, "malformed multipart body: bad close delimiter");
            mp->state = SEP_MP_EPILOGUE;
            break;

        case SEP_MP_AFTER_DELIM_PAD:
            off++;
            if (c == '\r')
                mp->state = SEP_MP_AFTER_DELIM_CR;
            else if (!sep_is_space(c))
                return sep_mp_fail(mp, "malformed multipart body: text after a boundary");
            break;

        case SEP_MP_AFTER_DELIM_CR:
            off++;
            if (c != '\n')
                return sep_mp_fail(mp, "malformed multipart body: CR without LF after a "
                                       "boundary");
            mp->state = SEP_MP_HEADERS;
            mp->header_len = 0;
            break;

        case SEP_MP_HEADERS: {
            /* Copy up to the end of the header block or of the chunk. */
            while (off < len) {
                if (mp->header_len == mp->header_cap)
                    return sep_mp_fail(mp, "multipart part headers are too large");
                mp->header[mp->header_len++] = data[off++];
                size_t h = mp->header_len;
                int done = (h == 2 && mp->header[0] == '\r' && mp->header[1] == '\n') ||
                           (h >= 4 && memcmp(mp->header + h - 4, "\r\n\r\n", 4) == 0);
                if (!done)
                    continue;
                sep_multipart_part_t part;
                if (sep_parse_part_headers(mp, &part) != 0)
                    return sep_mp_fail(mp, "malformed multipart part headers (each part needs "
                                           "Content-Disposition: form-data with a name)");
                mp->parts++;
                mp->in_part = 1;
                if (mp->callbacks->part_begin && mp->callbacks->part_begin(mp->user, &part))
                    return sep_mp_abort(mp);
                mp->state = SEP_MP_BODY;
                mp->match = 0;
                break;
            }
            break;
        }

        case SEP_MP_EPILOGUE:
            return SEP_MULTIPART_OK;

        default:
            return SEP_MULTIPART_ERROR;
        }
    }
    return SEP_MULTIPART_OK;
}

sep_multipart_status_t sep_multipart_finish(sep_multipart_t *mp)
{
    if (mp->state == SEP_MP_EPILOGUE)
        return SEP_MULTIPART_OK;
    if (mp->state == SEP_MP_FAILED)
        return SEP_MULTIPART_ERROR;
    if (mp->state == SEP_MP_PREAMBLE)
        return sep_mp_fail(mp, "malformed multipart body: no boundary found");
    return sep_mp_fail(mp, "malformed multipart body: it ends before the closing boundary");
}

const char *sep_multipart_error(const sep_multipart_t *mp)
{
    return mp->error;
}
