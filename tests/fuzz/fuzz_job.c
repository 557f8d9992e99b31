/*
 * fuzz_job.c - libFuzzer target over the job record code (shared/sep_job.c): the
 * Redis hash -> job -> public JSON path the module serves on every GET, and the event
 * messages of {p}ev:{id}. A hash's fields come from the job-state scripts, which copy
 * client options and worker messages into it, so they are treated as untrusted.
 *
 * The input is split at '\n' into field, value, field, value, ... and read with
 * sep_job_from_fields. Checks: the rendering fits sep_job_json_bound, is valid JSON
 * (jansson parses it back to an object), sep_job_to_json agrees, and reading the JSON
 * back (sep_job_from_json) and rendering again gives the same JSON value. The whole input
 * is also parsed as an event message.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "shared/sep_job.h"

#define MAX_ITEMS 256

/* JSON values equal as JSON: numbers by value (0 and 0.0 are the same number; the
 * renderer copies a number's text from the hash as it is), the rest as json_equal. */
static int json_same(json_t *a, json_t *b)
{
    if (json_is_number(a) && json_is_number(b))
        return json_number_value(a) == json_number_value(b);
    if (json_is_object(a) && json_is_object(b)) {
        if (json_object_size(a) != json_object_size(b))
            return 0;
        const char *key;
        json_t *va;
        json_object_foreach(a, key, va)
        {
            json_t *vb = json_object_get(b, key);
            if (!vb || !json_same(va, vb))
                return 0;
        }
        return 1;
    }
    if (json_is_array(a) && json_is_array(b)) {
        if (json_array_size(a) != json_array_size(b))
            return 0;
        for (size_t i = 0; i < json_array_size(a); i++)
            if (!json_same(json_array_get(a, i), json_array_get(b, i)))
                return 0;
        return 1;
    }
    return json_equal(a, b);
}

static void check_record(const char *const *items, const size_t *lens, size_t n)
{
    sep_job_t job;
    sep_job_init(&job);
    if (sep_job_from_fields(&job, n, items, lens) != 0) {
        sep_job_clear(&job);
        return;
    }
    size_t bound = sep_job_json_bound(&job);
    char *buf = malloc(bound);
    if (!buf)
        abort();
    size_t len = sep_job_render_json(&job, buf, bound);
    if (len == 0 || len > bound) {
        fprintf(stderr, "rendering of %zu bytes does not fit the bound %zu\n", len, bound);
        abort(); /* the bound must always hold the record */
    }
    json_error_t jerr;
    /* \u0000 is valid JSON (a NUL in a field); jansson wants to be told */
    json_t *doc = json_loadb(buf, len, JSON_ALLOW_NUL, &jerr);
    if (!doc || !json_is_object(doc)) {
        fprintf(stderr, "rendered record is not a JSON object: %s\n%.*s\n", jerr.text, (int)len,
                buf);
        abort();
    }
    json_t *built = sep_job_to_json(&job);
    if (!built || !json_equal(built, doc)) {
        char *dump = built ? json_dumps(built, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        fprintf(stderr, "sep_job_to_json differs from the rendering\n%.*s\n%s\n", (int)len, buf,
                dump ? dump : "(null)");
        abort();
    }
    json_decref(built);
    sep_job_t back;
    sep_job_init(&back);
    char err[256];
    if (sep_job_exists(&job) && sep_job_from_json(&back, doc, err, sizeof(err)) == 0) {
        size_t bound2 = sep_job_json_bound(&back);
        char *buf2 = malloc(bound2);
        if (!buf2)
            abort();
        size_t len2 = sep_job_render_json(&back, buf2, bound2);
        /* the same JSON value (escapes may differ: a replaced invalid byte is "\ufffd"
         * the first time and the character itself the second) */
        json_t *doc2 = len2 ? json_loadb(buf2, len2, JSON_ALLOW_NUL, &jerr) : NULL;
        if (!doc2 || !json_same(doc, doc2)) {
            fprintf(stderr, "JSON -> job -> JSON changed the record\n%.*s\n%.*s\n", (int)len, buf,
                    (int)len2, buf2);
            abort();
        }
        json_decref(doc2);
        free(buf2);
    }
    sep_job_clear(&back);
    json_decref(doc);
    free(buf);
    sep_job_clear(&job);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *items[MAX_ITEMS];
    size_t lens[MAX_ITEMS], n = 0;
    /* a copy per field, so ASan sees a read past any one of them */
    char *copy = malloc(size + 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    const char *p = copy, *end = copy + size;
    while (p <= end && n < MAX_ITEMS) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl : end;
        items[n] = p;
        lens[n] = (size_t)(stop - p);
        n++;
        if (!nl)
            break;
        p = nl + 1;
    }
    check_record(items, lens, n & ~(size_t)1);

    sep_event_t ev;
    if (sep_event_parse(&ev, (const char *)data, size) == 0) {
        size_t bound = sep_job_json_bound(&ev.job);
        char *buf = malloc(bound);
        if (!buf || sep_job_render_json(&ev.job, buf, bound) == 0)
            abort();
        free(buf);
        sep_event_clear(&ev);
    }
    free(copy);
    return 0;
}
