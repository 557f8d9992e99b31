/*
 * Unit tests of the job record (shared/sep_job.c, shared/sep_json.c): hash fields ->
 * public JSON (checked field by field through jansson), JSON -> record -> JSON round
 * trips, escaping and UTF-8 repair, buffer bounds, timestamps and event parsing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "shared/sep_job.h"
#include "shared/sep_json.h"

#define ID "1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b"

/* Loads a job from a NULL-terminated list of field/value C strings. */
static void load_fields(sep_job_t *job, const char *const *kv)
{
    const char *items[128];
    size_t lens[128];
    size_t n = 0;
    for (; kv[n]; n++) {
        items[n] = kv[n];
        lens[n] = strlen(kv[n]);
    }
    sep_job_init(job);
    assert_int_equal(sep_job_from_fields(job, n, items, lens), 0);
}

static json_t *render(const sep_job_t *job)
{
    size_t cap = sep_job_json_bound(job);
    char *buf = malloc(cap);
    size_t len = sep_job_render_json(job, buf, cap);
    assert_true(len > 0);
    json_error_t error;
    json_t *obj = json_loadb(buf, len, 0, &error);
    if (obj == NULL)
        fail_msg("rendered JSON does not parse: %s in %.*s", error.text, (int)len, buf);
    free(buf);
    return obj;
}

static const char *const queued_fields[] = {"id",
                                            ID,
                                            "status",
                                            "queued",
                                            "progress",
                                            "0",
                                            "stage",
                                            "queued",
                                            "message",
                                            "",
                                            "attempts",
                                            "0",
                                            "created_at",
                                            "1738231200123",
                                            "model",
                                            "htdemucs",
                                            "stems_option",
                                            "vocals",
                                            "format",
                                            "wav24",
                                            "priority",
                                            "high",
                                            "shifts",
                                            "2",
                                            "overlap",
                                            "0.25",
                                            "input",
                                            "input.wav",
                                            "input_type",
                                            "wav",
                                            "input_bytes",
                                            "65580",
                                            "max_attempts",
                                            "3",
                                            "result_ttl",
                                            "86400",
                                            "stream_id",
                                            "1738231200123-0",
                                            "some_future_field",
                                            "ignored",
                                            NULL};

static void test_queued_record_shape(void **state)
{
    (void)state;
    sep_job_t job;
    load_fields(&job, queued_fields);
    assert_true(sep_job_exists(&job));
    assert_int_equal(sep_job_status(&job), SEP_STATUS_QUEUED);
    json_t *o = render(&job);

    assert_string_equal(json_string_value(json_object_get(o, "id")), ID);
    assert_string_equal(json_string_value(json_object_get(o, "status")), "queued");
    assert_true(json_is_number(json_object_get(o, "progress")));
    assert_true(json_number_value(json_object_get(o, "progress")) == 0.0);
    assert_string_equal(json_string_value(json_object_get(o, "stage")), "queued");
    assert_string_equal(json_string_value(json_object_get(o, "message")), "");
    assert_int_equal(json_integer_value(json_object_get(o, "attempts")), 0);
    assert_int_equal(json_integer_value(json_object_get(o, "max_attempts")), 3);
    assert_string_equal(json_string_value(json_object_get(o, "created_at")),
                        "2025-01-30T10:00:00.123Z");
    assert_true(json_is_null(json_object_get(o, "started_at")));
    assert_true(json_is_null(json_object_get(o, "finished_at")));
    assert_true(json_is_null(json_object_get(o, "audio")));
    assert_true(json_is_null(json_object_get(o, "error")));
    assert_true(json_is_object(json_object_get(o, "stems")));
    assert_int_equal(json_object_size(json_object_get(o, "stems")), 0);
    json_t *timing = json_object_get(o, "timing");
    assert_int_equal(json_object_size(timing), 4);
    assert_true(json_is_null(json_object_get(timing, "queued_s")));
    assert_true(json_is_null(json_object_get(o, "worker")));
    json_t *opts = json_object_get(o, "options");
    assert_string_equal(json_string_value(json_object_get(opts, "model")), "htdemucs");
    assert_string_equal(json_string_value(json_object_get(opts, "stems")), "vocals");
    assert_string_equal(json_string_value(json_object_get(opts, "format")), "wav24");
    assert_string_equal(json_string_value(json_object_get(opts, "priority")), "high");
    assert_int_equal(json_integer_value(json_object_get(opts, "shifts")), 2);
    assert_true(json_real_value(json_object_get(opts, "overlap")) == 0.25);
    json_t *input = json_object_get(o, "input");
    assert_string_equal(json_string_value(json_object_get(input, "type")), "wav");
    assert_int_equal(json_integer_value(json_object_get(input, "bytes")), 65580);
    assert_true(json_is_false(json_object_get(o, "cancel_requested")));
    assert_true(json_is_false(json_object_get(o, "files_deleted")));
    /* internal fields stay internal */
    assert_null(json_object_get(o, "stream_id"));
    assert_null(json_object_get(o, "result_ttl"));
    assert_null(json_object_get(o, "some_future_field"));
    json_decref(o);
    sep_job_clear(&job);
}

static const char *const completed_fields[] = {
    "id",
    ID,
    "status",
    "completed",
    "progress",
    "1",
    "stage",
    "done",
    "message",
    "",
    "attempts",
    "1",
    "max_attempts",
    "3",
    "created_at",
    "1738231200000",
    "started_at",
    "1738231201000",
    "finished_at",
    "1738231209500",
    "worker",
    "gpu-host-1/0",
    "audio_seconds",
    "30.5",
    "audio_sample_rate",
    "44100",
    "audio_channels",
    "2",
    "stems",
    "{\"vocals\": {\"file\": \"vocals.wav\", \"bytes\": 5380044}, "
    "\"no_vocals\": {\"file\": \"no_vocals.wav\", \"bytes\": 5380000}, "
    "\"evil\": {\"file\": \"../../etc/passwd\", \"bytes\": 1}}",
    "timing_queued_s",
    "1",
    "timing_decode_s",
    "0.1",
    "timing_separate_s",
    "7.9",
    "timing_encode_s",
    "0.25",
    "model",
    "htdemucs",
    "stems_option",
    "vocals",
    "format",
    "wav",
    "priority",
    "normal",
    "shifts",
    "1",
    "overlap",
    "0.25",
    "input_type",
    "flac",
    "input_bytes",
    "123",
    NULL};

static void test_completed_record_shape(void **state)
{
    (void)state;
    sep_job_t job;
    load_fields(&job, completed_fields);
    assert_int_equal(job.n_stems, 2); /* the unsafe file name is not listed */
    const sep_job_stem_t *stem = sep_job_find_stem(&job, SEP_STR("no_vocals"));
    assert_non_null(stem);
    assert_int_equal(stem->bytes, 5380000);
    assert_null(sep_job_find_stem(&job, SEP_STR("evil")));
    assert_null(sep_job_find_stem(&job, SEP_STR("drums")));

    json_t *o = render(&job);
    assert_string_equal(json_string_value(json_object_get(o, "finished_at")),
                        "2025-01-30T10:00:09.500Z");
    json_t *audio = json_object_get(o, "audio");
    assert_true(json_number_value(json_object_get(audio, "seconds")) == 30.5);
    assert_int_equal(json_integer_value(json_object_get(audio, "sample_rate")), 44100);
    assert_int_equal(json_integer_value(json_object_get(audio, "channels")), 2);
    json_t *stems = json_object_get(o, "stems");
    assert_int_equal(json_object_size(stems), 2);
    json_t *vocals = json_object_get(stems, "vocals");
    assert_string_equal(json_string_value(json_object_get(vocals, "url")),
                        "/v1/jobs/" ID "/stems/vocals.wav");
    assert_int_equal(json_integer_value(json_object_get(vocals, "bytes")), 5380044);
    json_t *timing = json_object_get(o, "timing");
    assert_true(json_number_value(json_object_get(timing, "separate_s")) == 7.9);
    assert_true(json_number_value(json_object_get(timing, "queued_s")) == 1.0);
    assert_string_equal(json_string_value(json_object_get(o, "worker")), "gpu-host-1/0");
    json_decref(o);

    /* after an early delete the stems are gone from the record */
    sep_job_set_field(&job, SEP_STR("files_deleted"), SEP_STR("1"));
    o = render(&job);
    assert_int_equal(json_object_size(json_object_get(o, "stems")), 0);
    assert_true(json_is_true(json_object_get(o, "files_deleted")));
    json_decref(o);
    sep_job_clear(&job);
}

static void test_failed_record_error(void **state)
{
    (void)state;
    static const char *const fields[] = {"id",
                                         ID,
                                         "status",
                                         "failed",
                                         "error_code",
                                         "decode_failed",
                                         "error_message",
                                         "not an audio file",
                                         "error_retryable",
                                         "0",
                                         "attempts",
                                         "1",
                                         NULL};
    sep_job_t job;
    load_fields(&job, fields);
    json_t *o = render(&job);
    json_t *error = json_object_get(o, "error");
    assert_string_equal(json_string_value(json_object_get(error, "code")), "decode_failed");
    assert_string_equal(json_string_value(json_object_get(error, "message")), "not an audio file");
    assert_true(json_is_false(json_object_get(error, "retryable")));
    json_decref(o);
    sep_job_clear(&job);
}

static void test_escaping_and_bad_utf8(void **state)
{
    (void)state;
    static const char *const fields[] = {
        "id",
        ID,
        "status",
        "running",
        "message",
        "quote \" backslash \\ newline \n tab \t bell \x07 caf\xc3\xa9 bad \xff\xfe "
        "overlong \xc0\xaf surrogate \xed\xa0\x80 cut \xe2\x82",
        "worker",
        "w\x01",
        NULL};
    sep_job_t job;
    load_fields(&job, fields);
    json_t *o = render(&job);
    const char *msg = json_string_value(json_object_get(o, "message"));
    assert_non_null(msg);
    assert_non_null(strstr(msg, "quote \" backslash \\ newline \n tab \t bell \x07 caf\xc3\xa9"));
    assert_non_null(strstr(msg, "bad \xef\xbf\xbd\xef\xbf\xbd "));
    assert_non_null(strstr(msg, "overlong \xef\xbf\xbd\xef\xbf\xbd "));
    assert_non_null(strstr(msg, "cut \xef\xbf\xbd\xef\xbf\xbd"));
    assert_string_equal(json_string_value(json_object_get(o, "worker")), "w\x01");
    json_decref(o);
    sep_job_clear(&job);
}

static void test_bounds_and_small_buffers(void **state)
{
    (void)state;
    sep_job_t job;
    load_fields(&job, completed_fields);
    size_t bound = sep_job_json_bound(&job);
    char *buf = malloc(bound);
    size_t len = sep_job_render_json(&job, buf, bound);
    assert_true(len > 0 && len <= bound);
    /* every smaller buffer is refused, never overrun */
    for (size_t cap = 0; cap < len; cap += 7) {
        char *small = malloc(cap ? cap : 1);
        assert_int_equal(sep_job_render_json(&job, small, cap), 0);
        free(small);
    }
    char *exact = malloc(len);
    assert_int_equal(sep_job_render_json(&job, exact, len), len);
    assert_memory_equal(exact, buf, len);
    free(exact);
    free(buf);

    /* a message of only escapes still fits its bound */
    char worst[3000];
    memset(worst, '\x01', sizeof(worst) - 1);
    worst[sizeof(worst) - 1] = '\0';
    sep_job_t w;
    const char *const wf[] = {"id",         ID,  "status",        "failed", "message", worst,
                              "error_code", "x", "error_message", worst,    NULL};
    load_fields(&w, wf);
    bound = sep_job_json_bound(&w);
    buf = malloc(bound);
    assert_true(sep_job_render_json(&w, buf, bound) > 6 * 2 * 2999);
    free(buf);
    sep_job_clear(&job);
}

/* A failed job: the error object and both flags, for the JSON round trip. */
static const char *const failed_fields[] = {"id",
                                            ID,
                                            "status",
                                            "failed",
                                            "progress",
                                            "0.5",
                                            "stage",
                                            "failed",
                                            "message",
                                            "bad input",
                                            "attempts",
                                            "2",
                                            "max_attempts",
                                            "2",
                                            "created_at",
                                            "1738231200000",
                                            "started_at",
                                            "1738231201000",
                                            "finished_at",
                                            "1738231202000",
                                            "error_code",
                                            "decode_error",
                                            "error_message",
                                            "bad input",
                                            "error_retryable",
                                            "0",
                                            "cancel_requested",
                                            "1",
                                            "files_deleted",
                                            "1",
                                            NULL};

static void test_json_round_trip(void **state)
{
    (void)state;
    const char *const *sets[] = {queued_fields, completed_fields, failed_fields};
    for (size_t s = 0; s < sizeof(sets) / sizeof(sets[0]); s++) {
        sep_job_t job;
        load_fields(&job, sets[s]);
        json_t *first = sep_job_to_json(&job);
        assert_non_null(first);
        sep_job_t back;
        char err[128];
        assert_int_equal(sep_job_from_json(&back, first, err, sizeof(err)), 0);
        json_t *second = sep_job_to_json(&back);
        if (!json_equal(first, second)) {
            char *a = json_dumps(first, JSON_SORT_KEYS), *b = json_dumps(second, JSON_SORT_KEYS);
            fail_msg("round trip differs:\n%s\n%s", a, b);
        }
        json_decref(second);
        json_decref(first);
        sep_job_clear(&back);
        sep_job_clear(&job);
    }
    sep_job_t job;
    char err[128];
    json_t *bad = json_pack("{s:s}", "id", ID);
    assert_int_equal(sep_job_from_json(&job, bad, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "status"));
    json_decref(bad);
}

static void test_iso8601(void **state)
{
    (void)state;
    char buf[32];
    assert_int_equal(sep_format_iso8601(buf, sizeof(buf), 0), 24);
    assert_string_equal(buf, "1970-01-01T00:00:00.000Z");
    sep_format_iso8601(buf, sizeof(buf), 951782400999LL); /* leap day 2000 */
    assert_string_equal(buf, "2000-02-29T00:00:00.999Z");
    assert_int_equal(sep_format_iso8601(buf, sizeof(buf), -1), 0);
    assert_int_equal(sep_format_iso8601(buf, 10, 0), 0);
    long long ms;
    assert_int_equal(sep_parse_iso8601(SEP_STR("2000-02-29T00:00:00.999Z"), &ms), 0);
    assert_int_equal(ms, 951782400999LL);
    assert_int_equal(sep_parse_iso8601(SEP_STR("2025-01-30T10:00:00Z"), &ms), 0);
    assert_int_equal(ms, 1738231200000LL);
    assert_int_equal(sep_parse_iso8601(SEP_STR("2025-01-30T10:00:00.5Z"), &ms), 0);
    assert_int_equal(ms, 1738231200500LL);
    assert_int_equal(sep_parse_iso8601(SEP_STR("2025-01-30 10:00:00Z"), &ms), -1);
    assert_int_equal(sep_parse_iso8601(SEP_STR("2025-01-30T10:00:00+01:00"), &ms), -1);
    assert_int_equal(sep_parse_iso8601(SEP_STR("2025-01-30T10:00:00.Z"), &ms), -1);
}

static void test_event_parse(void **state)
{
    (void)state;
    const char *msg = "{\"event\":\"completed\",\"job\":{\"id\":\"" ID "\",\"status\":"
                      "\"completed\",\"progress\":\"1\",\"stems\":\"{\\\"vocals\\\":{\\\"file\\\":"
                      "\\\"vocals.wav\\\",\\\"bytes\\\":10}}\",\"audio_channels\":\"2\"}}";
    sep_event_t ev;
    assert_int_equal(sep_event_parse(&ev, msg, strlen(msg)), 0);
    assert_true(sep_str_eq(ev.event, "completed"));
    assert_int_equal(sep_job_status(&ev.job), SEP_STATUS_COMPLETED);
    assert_int_equal(ev.job.n_stems, 1);
    assert_int_equal(ev.job.audio_channels, 2);
    json_t *o = render(&ev.job);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_object_get(o, "stems"), "vocals"), "url")),
                        "/v1/jobs/" ID "/stems/vocals.wav");
    json_decref(o);
    sep_event_clear(&ev);

    assert_int_equal(sep_event_parse(&ev, "{\"job\":{}}", 10), -1);
    assert_int_equal(sep_event_parse(&ev, "not json", 8), -1);
    assert_int_equal(sep_event_parse(&ev, "{\"event\":\"x\",\"job\":[]}", 22), -1);
}

static void test_error_json(void **state)
{
    (void)state;
    char buf[256];
    size_t n = sep_json_error(buf, sizeof(buf), "invalid_option", SEP_STR("model \"x\" bad"));
    assert_true(n > 0);
    json_t *o = json_loadb(buf, n, 0, NULL);
    assert_non_null(o);
    json_t *e = json_object_get(o, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "invalid_option");
    assert_string_equal(json_string_value(json_object_get(e, "message")), "model \"x\" bad");
    json_decref(o);
    assert_int_equal(sep_json_error(buf, 20, "invalid_option", SEP_STR("x")), 0);
}

static void test_status_names_and_bad_numbers(void **state)
{
    (void)state;
    static const char *const fields[] = {"id",       ID,   "status",     "weird", "progress", "abc",
                                         "attempts", "1x", "created_at", "",      NULL};
    sep_job_t job;
    load_fields(&job, fields);
    assert_int_equal(sep_job_status(&job), SEP_STATUS_UNKNOWN);
    assert_true(job.attempts == -1 && job.created_at == -1);
    json_t *o = render(&job);
    assert_int_equal(json_integer_value(json_object_get(o, "attempts")), 0);
    assert_true(json_is_null(json_object_get(o, "created_at")));
    json_decref(o);
    assert_string_equal(sep_job_status_name(SEP_STATUS_CANCELED), "canceled");
    const char *odd[] = {"id"};
    size_t odd_len[] = {2};
    assert_int_equal(sep_job_from_fields(&job, 1, odd, odd_len), -1);
    sep_job_init(&job);
    assert_false(sep_job_exists(&job));
}

static void test_numbers_render_from_their_text(void **state)
{
    (void)state;
    /* plain JSON numbers are copied; anything else is formatted from the double */
    static const char *const fields[] = {"id",
                                         ID,
                                         "status",
                                         "running",
                                         "progress",
                                         "0.50",
                                         "overlap",
                                         ".25",
                                         "audio_seconds",
                                         "+3.5",
                                         "timing_decode_s",
                                         "1e-3",
                                         "timing_separate_s",
                                         "nan",
                                         "timing_encode_s",
                                         "2.",
                                         "attempts",
                                         "-2",
                                         "max_attempts",
                                         "007",
                                         "shifts",
                                         "1x",
                                         NULL};
    sep_job_t job;
    load_fields(&job, fields);
    size_t cap = sep_job_json_bound(&job);
    char *buf = malloc(cap);
    size_t len = sep_job_render_json(&job, buf, cap);
    buf[len] = '\0';
    assert_non_null(strstr(buf, "\"progress\":0.50,"));
    assert_non_null(strstr(buf, "\"overlap\":0.25}"));
    assert_non_null(strstr(buf, "\"seconds\":3.5,"));
    assert_non_null(strstr(buf, "\"decode_s\":1e-3,"));
    assert_non_null(strstr(buf, "\"separate_s\":null,"));
    assert_non_null(strstr(buf, "\"encode_s\":2}"));
    assert_non_null(strstr(buf, "\"attempts\":0,")); /* negative: rendered as none */
    assert_non_null(strstr(buf, "\"max_attempts\":7,"));
    assert_non_null(strstr(buf, "\"shifts\":null,"));
    json_t *o = json_loadb(buf, len, 0, NULL);
    assert_non_null(o);
    json_decref(o);
    free(buf);
    sep_job_clear(&job);
}

/* Defects fuzz_job found (their inputs are in tests/fuzz/job/found-*): a huge double
 * cast to long long before its range was checked (UB), a 25-digit integer copied as it
 * was (jansson and int64 parsers refuse it), stem URLs built from an id with control
 * bytes (invalid JSON), and a NUL byte in a field making sep_job_to_json fail. */
static void test_fuzz_findings(void **state)
{
    (void)state;
    const char *const numbers[] = {"id",
                                   ID,
                                   "status",
                                   "completed",
                                   "timing_decode_s",
                                   "1e38",
                                   "timing_encode_s",
                                   "5000000000001764700000100",
                                   NULL};
    sep_job_t job;
    load_fields(&job, numbers);
    json_t *obj = render(&job); /* parses without JSON_DECODE_INT_AS_REAL */
    json_t *timing = json_object_get(obj, "timing");
    assert_true(json_number_value(json_object_get(timing, "decode_s")) == 1e38);
    assert_true(json_number_value(json_object_get(timing, "encode_s")) ==
                5000000000001764700000100.0);
    json_decref(obj);
    sep_job_clear(&job);

    const char *const bad_id[] = {
        "id",        ID "\x01", "status",
        "completed", "stems",   "{\"vocals\": {\"file\": \"vocals.wav\", \"bytes\": 4}}",
        NULL};
    load_fields(&job, bad_id);
    obj = render(&job);
    assert_int_equal(json_object_size(json_object_get(obj, "stems")), 0);
    json_decref(obj);
    sep_job_clear(&job);

    const char *items[] = {"id", ID, "status", "fail\0ed"};
    size_t lens[] = {2, strlen(ID), 6, 7};
    sep_job_init(&job);
    assert_int_equal(sep_job_from_fields(&job, 4, items, lens), 0);
    obj = sep_job_to_json(&job);
    assert_non_null(obj);
    assert_int_equal(json_string_length(json_object_get(obj, "status")), 7);
    json_decref(obj);
    sep_job_clear(&job);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_queued_record_shape),
        cmocka_unit_test(test_completed_record_shape),
        cmocka_unit_test(test_failed_record_error),
        cmocka_unit_test(test_escaping_and_bad_utf8),
        cmocka_unit_test(test_bounds_and_small_buffers),
        cmocka_unit_test(test_json_round_trip),
        cmocka_unit_test(test_iso8601),
        cmocka_unit_test(test_event_parse),
        cmocka_unit_test(test_error_json),
        cmocka_unit_test(test_status_names_and_bad_numbers),
        cmocka_unit_test(test_numbers_render_from_their_text),
        cmocka_unit_test(test_fuzz_findings),
    };
    return cmocka_run_group_tests_name("job", tests, NULL, NULL);
}
