/*
 * Unit tests of the streaming multipart/form-data parser (shared/sep_multipart.c):
 * the same bodies fed whole, split in two at every offset, byte by byte and in
 * uneven chunks must give the same parts; delimiters split across chunks,
 * delimiter-like content, preamble/epilogue, transport padding, empty parts,
 * header size limits and malformed bodies.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "shared/sep_multipart.h"

#define MAX_PARTS 8

typedef struct collected_part {
    char name[64];
    char filename[128];
    int has_filename;
    char content_type[64];
    int has_content_type;
    char *data;
    size_t len;
    int ended;
} collected_part_t;

typedef struct collector {
    collected_part_t parts[MAX_PARTS];
    int n;
    int abort_on_data; /* callbacks return non-zero when set */
} collector_t;

static void copy_view(char *dst, size_t cap, sep_str_t v)
{
    size_t n = v.len < cap - 1 ? v.len : cap - 1;
    memcpy(dst, v.ptr, n);
    dst[n] = '\0';
}

static int on_begin(void *user, const sep_multipart_part_t *part)
{
    collector_t *c = user;
    assert_true(c->n < MAX_PARTS);
    if (c->n > 0)
        assert_true(c->parts[c->n - 1].ended);
    collected_part_t *p = &c->parts[c->n++];
    memset(p, 0, sizeof(*p));
    copy_view(p->name, sizeof(p->name), part->name);
    if (part->filename.ptr) {
        p->has_filename = 1;
        copy_view(p->filename, sizeof(p->filename), part->filename);
    }
    if (part->content_type.ptr) {
        p->has_content_type = 1;
        copy_view(p->content_type, sizeof(p->content_type), part->content_type);
    }
    return 0;
}

static int on_data(void *user, const char *data, size_t len)
{
    collector_t *c = user;
    assert_true(c->n > 0);
    assert_true(len > 0);
    if (c->abort_on_data)
        return 1;
    collected_part_t *p = &c->parts[c->n - 1];
    assert_false(p->ended);
    p->data = realloc(p->data, p->len + len);
    assert_non_null(p->data);
    memcpy(p->data + p->len, data, len);
    p->len += len;
    return 0;
}

static int on_end(void *user)
{
    collector_t *c = user;
    assert_true(c->n > 0);
    c->parts[c->n - 1].ended = 1;
    return 0;
}

static const sep_multipart_callbacks_t callbacks = {on_begin, on_data, on_end};

static void collector_free(collector_t *c)
{
    for (int i = 0; i < c->n; i++)
        free(c->parts[i].data);
    memset(c, 0, sizeof(*c));
}

/* Parses body fed in chunks of the given sizes (cycled); returns the finish status
 * (or the first failing feed status). */
static sep_multipart_status_t parse_chunked(const char *boundary, const char *body, size_t len,
                                            const size_t *chunks, size_t n_chunks,
                                            size_t header_cap, collector_t *c, const char **error)
{
    sep_multipart_t mp;
    char *header = malloc(header_cap);
    assert_int_equal(
        sep_multipart_init(&mp, sep_str_from_cstr(boundary), header, header_cap, &callbacks, c), 0);
    size_t off = 0, k = 0;
    sep_multipart_status_t st = SEP_MULTIPART_OK;
    while (off < len) {
        size_t n = chunks[k++ % n_chunks];
        if (n > len - off)
            n = len - off;
        /* Feed from a copy of exactly n bytes so reading past the chunk is caught
         * by the sanitizer. */
        char *chunk = malloc(n ? n : 1);
        memcpy(chunk, body + off, n);
        st = sep_multipart_feed(&mp, chunk, n);
        free(chunk);
        off += n;
        if (st != SEP_MULTIPART_OK)
            break;
    }
    if (st == SEP_MULTIPART_OK)
        st = sep_multipart_finish(&mp);
    if (error)
        *error = sep_multipart_error(&mp);
    free(header);
    return st;
}

static sep_multipart_status_t parse_whole(const char *boundary, const char *body, size_t len,
                                          collector_t *c)
{
    size_t whole = len ? len : 1;
    return parse_chunked(boundary, body, len, &whole, 1, 8192, c, NULL);
}

/* A file payload full of delimiter look-alikes. */
static const char tricky_payload[] = "RIFF\r\n--\r\n--boundar\r\n--boundarZ\r\r\n\r\n-"
                                     "-boundar-ish\r\n--bound\r";

static char *build_body(size_t *len, const char *preamble, const char *epilogue)
{
    char *body = malloc(4096);
    size_t n = 0;
    n += (size_t)sprintf(body + n, "%s", preamble);
    n += (size_t)sprintf(body + n, "--boundary\r\n"
                                   "Content-Disposition: form-data; name=\"model\"\r\n"
                                   "\r\n"
                                   "htdemucs_6s\r\n"
                                   "--boundary\r\n"
                                   "content-disposition: form-data; name=stems\r\n"
                                   "\r\n"
                                   "guitar\r\n"
                                   "--boundary\r\n"
                                   "Content-Disposition: form-data; name=\"file\"; "
                                   "filename=\"my \\\"song\\\".wav\"\r\n"
                                   "Content-Type: audio/wav\r\n"
                                   "\r\n");
    memcpy(body + n, tricky_payload, sizeof(tricky_payload) - 1);
    n += sizeof(tricky_payload) - 1;
    body[n++] = '\0'; /* binary content with a NUL */
    body[n++] = 'X';
    n += (size_t)sprintf(body + n, "\r\n--boundary--%s", epilogue);
    *len = n;
    return body;
}

static void check_three_parts(collector_t *c)
{
    assert_int_equal(c->n, 3);
    assert_string_equal(c->parts[0].name, "model");
    assert_int_equal(c->parts[0].len, strlen("htdemucs_6s"));
    assert_memory_equal(c->parts[0].data, "htdemucs_6s", c->parts[0].len);
    assert_false(c->parts[0].has_filename);
    assert_string_equal(c->parts[1].name, "stems");
    assert_memory_equal(c->parts[1].data, "guitar", 6);
    assert_int_equal(c->parts[1].len, 6);
    assert_string_equal(c->parts[2].name, "file");
    assert_true(c->parts[2].has_filename);
    assert_string_equal(c->parts[2].filename, "my \"song\".wav");
    assert_true(c->parts[2].has_content_type);
    assert_string_equal(c->parts[2].content_type, "audio/wav");
    size_t want = sizeof(tricky_payload) - 1 + 2;
    assert_int_equal(c->parts[2].len, want);
    assert_memory_equal(c->parts[2].data, tricky_payload, sizeof(tricky_payload) - 1);
    assert_int_equal(c->parts[2].data[want - 2], '\0');
    assert_int_equal(c->parts[2].data[want - 1], 'X');
    for (int i = 0; i < 3; i++)
        assert_true(c->parts[i].ended);
}

static void test_whole_body(void **state)
{
    (void)state;
    size_t len;
    char *body = build_body(&len, "", "");
    collector_t c = {0};
    assert_int_equal(parse_whole("boundary", body, len, &c), SEP_MULTIPART_OK);
    check_three_parts(&c);
    collector_free(&c);
    free(body);
}

static void test_split_at_every_offset(void **state)
{
    (void)state;
    size_t len;
    char *body = build_body(&len, "This is the preamble.\r\n", "\r\nepilogue text\r\n");
    for (size_t cut = 0; cut <= len; cut++) {
        collector_t c = {0};
        size_t chunks[2] = {cut, len - cut};
        sep_multipart_t mp;
        char header[8192];
        assert_int_equal(
            sep_multipart_init(&mp, SEP_STR("boundary"), header, sizeof(header), &callbacks, &c),
            0);
        assert_int_equal(sep_multipart_feed(&mp, body, chunks[0]), SEP_MULTIPART_OK);
        assert_int_equal(sep_multipart_feed(&mp, body + cut, chunks[1]), SEP_MULTIPART_OK);
        assert_int_equal(sep_multipart_finish(&mp), SEP_MULTIPART_OK);
        check_three_parts(&c);
        collector_free(&c);
    }
    free(body);
}

static void test_three_way_splits(void **state)
{
    (void)state;
    size_t len;
    char *body = build_body(&len, "", "");
    /* Every pair of cut points inside the file part's region and its delimiter. */
    const char *file_start = strstr(body, "RIFF");
    size_t from = (size_t)(file_start - body);
    for (size_t a = from; a < len; a++) {
        for (size_t b = a; b <= len; b++) {
            collector_t c = {0};
            sep_multipart_t mp;
            char header[1024];
            assert_int_equal(sep_multipart_init(&mp, SEP_STR("boundary"), header, sizeof(header),
                                                &callbacks, &c),
                             0);
            assert_int_equal(sep_multipart_feed(&mp, body, a), SEP_MULTIPART_OK);
            assert_int_equal(sep_multipart_feed(&mp, body + a, b - a), SEP_MULTIPART_OK);
            assert_int_equal(sep_multipart_feed(&mp, body + b, len - b), SEP_MULTIPART_OK);
            assert_int_equal(sep_multipart_finish(&mp), SEP_MULTIPART_OK);
            check_three_parts(&c);
            collector_free(&c);
        }
    }
    free(body);
}

static void test_byte_by_byte_and_uneven(void **state)
{
    (void)state;
    size_t len;
    char *body = build_body(&len, "preamble\r\n", "epilogue");
    size_t one = 1;
    collector_t c = {0};
    assert_int_equal(parse_chunked("boundary", body, len, &one, 1, 8192, &c, NULL),
                     SEP_MULTIPART_OK);
    check_three_parts(&c);
    collector_free(&c);

    const size_t uneven[] = {3, 7, 1, 13, 2, 5, 11, 4};
    assert_int_equal(parse_chunked("boundary", body, len, uneven, 8, 8192, &c, NULL),
                     SEP_MULTIPART_OK);
    check_three_parts(&c);
    collector_free(&c);
    free(body);
}

static void test_large_file_part_streams(void **state)
{
    (void)state;
    /* 1 MiB of pseudo-random bytes (with many CRs and dashes) in 4 KiB reads. */
    size_t payload_len = 1 << 20;
    char *body = malloc(payload_len + 512);
    size_t n = (size_t)sprintf(body, "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; "
                                     "filename=\"a.bin\"\r\n\r\n");
    char *payload = body + n;
    uint32_t x = 12345;
    for (size_t i = 0; i < payload_len; i++) {
        x = x * 1103515245u + 12345u;
        static const char alphabet[] = "\r\n-XyZab";
        payload[i] = alphabet[(x >> 16) % 8];
    }
    n += payload_len;
    n += (size_t)sprintf(body + n, "\r\n--XyZ--\r\n");
    size_t chunk = 4096;
    collector_t c = {0};
    assert_int_equal(parse_chunked("XyZ", body, n, &chunk, 1, 1024, &c, NULL), SEP_MULTIPART_OK);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.parts[0].len, payload_len);
    assert_memory_equal(c.parts[0].data, payload, payload_len);
    collector_free(&c);
    free(body);
}

static void test_no_file_part(void **state)
{
    (void)state;
    const char *body = "--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nhtdemucs"
                       "\r\n--b--";
    collector_t c = {0};
    assert_int_equal(parse_whole("b", body, strlen(body), &c), SEP_MULTIPART_OK);
    assert_int_equal(c.n, 1);
    assert_string_equal(c.parts[0].name, "model");
    assert_false(c.parts[0].has_filename);
    collector_free(&c);
}

static void test_empty_and_crlf_parts(void **state)
{
    (void)state;
    const char *body = "\r\n--b\r\nContent-Disposition: form-data; name=\"empty\"\r\n\r\n"
                       "\r\n--b\r\nContent-Disposition: form-data; name=\"crlf\"\r\n\r\n"
                       "\r\n\r\n--b \t \r\nContent-Disposition: form-data; name=\"dash\"\r\n\r\n"
                       "\r\n-\r\n--b--\r\n";
    collector_t c = {0};
    const size_t one = 1;
    for (int pass = 0; pass < 2; pass++) {
        sep_multipart_status_t st =
            pass == 0 ? parse_whole("b", body, strlen(body), &c)
                      : parse_chunked("b", body, strlen(body), &one, 1, 8192, &c, NULL);
        assert_int_equal(st, SEP_MULTIPART_OK);
        assert_int_equal(c.n, 3);
        assert_string_equal(c.parts[0].name, "empty");
        assert_int_equal(c.parts[0].len, 0);
        assert_true(c.parts[0].ended);
        assert_string_equal(c.parts[1].name, "crlf");
        assert_int_equal(c.parts[1].len, 2);
        assert_memory_equal(c.parts[1].data, "\r\n", 2);
        assert_string_equal(c.parts[2].name, "dash");
        assert_int_equal(c.parts[2].len, 3);
        assert_memory_equal(c.parts[2].data, "\r\n-", 3);
        collector_free(&c);
    }
}

static void test_header_limit(void **state)
{
    (void)state;
    char body[4096];
    size_t n = (size_t)sprintf(body, "--b\r\nContent-Disposition: form-data; name=\"file\"\r\n"
                                     "X-Padding: ");
    memset(body + n, 'a', 300);
    n += 300;
    n += (size_t)sprintf(body + n, "\r\n\r\ndata\r\n--b--");
    size_t whole = n;
    collector_t c = {0};
    const char *error = NULL;
    /* 256 bytes of header space: too small. */
    assert_int_equal(parse_chunked("b", body, n, &whole, 1, 256, &c, &error), SEP_MULTIPART_ERROR);
    assert_non_null(error);
    assert_non_null(strstr(error, "too large"));
    assert_int_equal(c.n, 0);
    collector_free(&c);
    /* 1 KiB: fine. */
    assert_int_equal(parse_chunked("b", body, n, &whole, 1, 1024, &c, NULL), SEP_MULTIPART_OK);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.parts[0].len, 4);
    collector_free(&c);
}

static void test_malformed_bodies(void **state)
{
    (void)state;
    static const struct {
        const char *body;
        const char *why;
    } cases[] = {
        {"no boundary anywhere", "no boundary"},
        {"--b\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nunterminated", "ends before"},
        {"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--", "headers"},
        {"--b\r\nContent-Disposition: attachment; name=\"f\"\r\n\r\nx\r\n--b--", "headers"},
        {"--b\r\nContent-Disposition: form-data; filename=\"a\"\r\n\r\nx\r\n--b--", "headers"},
        {"--bX\r\n", "neither"},
        {"--b-x", "close delimiter"},
        {"--b\rX", "CR without LF"},
        {"--b  x\r\n", "text after"},
        {"--b\r\nBroken header line\r\n\r\nx\r\n--b--", "headers"},
        {"--b\r\nContent-Disposition: form-data; name=\"unclosed\r\n\r\nx\r\n--b--", "headers"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        collector_t c = {0};
        const char *error = NULL;
        size_t len = strlen(cases[i].body);
        size_t whole = len;
        sep_multipart_status_t st =
            parse_chunked("b", cases[i].body, len, &whole, 1, 8192, &c, &error);
        if (st != SEP_MULTIPART_ERROR || error == NULL || strstr(error, cases[i].why) == NULL)
            fail_msg("case %zu: status %d, error '%s', wanted '%s'", i, st,
                     error ? error : "(none)", cases[i].why);
        collector_free(&c);
    }
}

static void test_callback_abort(void **state)
{
    (void)state;
    size_t len;
    char *body = build_body(&len, "", "");
    collector_t c = {0};
    c.abort_on_data = 1;
    assert_int_equal(parse_whole("boundary", body, len, &c), SEP_MULTIPART_ABORTED);
    collector_free(&c);
    free(body);
}

static void test_epilogue_ignored_even_with_boundaries(void **state)
{
    (void)state;
    const char *body = "--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--b--\r\n"
                       "--b\r\nContent-Disposition: form-data; name=\"ghost\"\r\n\r\n2\r\n--b--";
    collector_t c = {0};
    assert_int_equal(parse_whole("b", body, strlen(body), &c), SEP_MULTIPART_OK);
    assert_int_equal(c.n, 1);
    assert_string_equal(c.parts[0].name, "a");
    collector_free(&c);
}

static void test_boundary_from_content_type(void **state)
{
    (void)state;
    sep_str_t b;
    assert_int_equal(sep_multipart_boundary(SEP_STR("multipart/form-data; boundary=abc123"), &b),
                     0);
    assert_int_equal(b.len, 6);
    assert_memory_equal(b.ptr, "abc123", 6);
    assert_int_equal(sep_multipart_boundary(
                         SEP_STR("Multipart/Form-Data;charset=utf-8; BOUNDARY=\"a b:c\""), &b),
                     0);
    assert_int_equal(b.len, 5);
    assert_memory_equal(b.ptr, "a b:c", 5);
    assert_int_equal(sep_multipart_boundary(
                         SEP_STR("multipart/form-data; boundary=----WebKitFormBoundary7MA4"), &b),
                     0);
    assert_int_equal(b.len, strlen("----WebKitFormBoundary7MA4"));

    assert_int_equal(sep_multipart_boundary(SEP_STR("multipart/form-data"), &b), -1);
    assert_int_equal(sep_multipart_boundary(SEP_STR("multipart/mixed; boundary=x"), &b), -1);
    assert_int_equal(sep_multipart_boundary(SEP_STR("multipart/form-data; boundary="), &b), -1);
    assert_int_equal(sep_multipart_boundary(SEP_STR("multipart/form-data; boundary=\"abc"), &b),
                     -1);
    assert_int_equal(sep_multipart_boundary(SEP_STR("multipart/form-data; boundary=a\"b"), &b), -1);
    char long_ct[200];
    snprintf(long_ct, sizeof(long_ct), "multipart/form-data; boundary=%071d", 0);
    assert_int_equal(sep_multipart_boundary(sep_str_from_cstr(long_ct), &b), -1);

    assert_true(sep_multipart_is_form_data(SEP_STR(" multipart/form-data ; boundary=x")));
    assert_false(sep_multipart_is_form_data(SEP_STR("audio/wav")));
    assert_false(sep_multipart_is_form_data(SEP_STR_NULL));
}

static void test_init_rejects_bad_input(void **state)
{
    (void)state;
    sep_multipart_t mp;
    char header[128];
    collector_t c = {0};
    assert_int_equal(sep_multipart_init(&mp, SEP_STR(""), header, sizeof(header), &callbacks, &c),
                     -1);
    assert_int_equal(sep_multipart_init(&mp, SEP_STR("b"), header, 16, &callbacks, &c), -1);
    assert_int_equal(sep_multipart_init(&mp, SEP_STR("bad\rb"), header, 128, &callbacks, &c), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whole_body),
        cmocka_unit_test(test_split_at_every_offset),
        cmocka_unit_test(test_three_way_splits),
        cmocka_unit_test(test_byte_by_byte_and_uneven),
        cmocka_unit_test(test_large_file_part_streams),
        cmocka_unit_test(test_no_file_part),
        cmocka_unit_test(test_empty_and_crlf_parts),
        cmocka_unit_test(test_header_limit),
        cmocka_unit_test(test_malformed_bodies),
        cmocka_unit_test(test_callback_abort),
        cmocka_unit_test(test_epilogue_ignored_even_with_boundaries),
        cmocka_unit_test(test_boundary_from_content_type),
        cmocka_unit_test(test_init_rejects_bad_input),
    };
    return cmocka_run_group_tests_name("multipart", tests, NULL, NULL);
}
