/*
 * Unit tests of job ids (shared/sep_id.c) and the Redis key builders
 * (shared/sep_keys.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "shared/sep_id.h"
#include "shared/sep_keys.h"

static int cmp_ids(const void *a, const void *b)
{
    return memcmp(a, b, SEP_ID_LEN);
}

static void test_generated_ids_are_valid_and_unique(void **state)
{
    (void)state;
    enum { N = 20000 };
    char(*ids)[SEP_ID_LEN + 1] = calloc(N, SEP_ID_LEN + 1);
    assert_non_null(ids);
    unsigned nibble_seen[16] = {0};
    for (int i = 0; i < N; i++) {
        assert_int_equal(sep_id_generate(ids[i]), 0);
        assert_int_equal(strlen(ids[i]), SEP_ID_LEN);
        assert_true(sep_id_valid(ids[i], SEP_ID_LEN));
        assert_int_equal(ids[i][14], '4');
        assert_non_null(strchr("89ab", ids[i][19]));
        char c = ids[i][0];
        nibble_seen[c <= '9' ? c - '0' : c - 'a' + 10]++;
    }
    qsort(ids, N, SEP_ID_LEN + 1, cmp_ids);
    for (int i = 1; i < N; i++)
        assert_true(memcmp(ids[i - 1], ids[i], SEP_ID_LEN) != 0);
    /* The first hex digit is uniform: every value appears plenty of times. */
    for (int d = 0; d < 16; d++)
        assert_true(nibble_seen[d] > N / 16 / 2);
    free(ids);
}

static void test_id_validation(void **state)
{
    (void)state;
    const char *good = "1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b";
    assert_true(sep_id_valid(good, strlen(good)));
    static const char *const bad[] = {
        "1B4E28BA-2FA1-4D3B-A3F5-EF19B5A7633B",  /* uppercase */
        "1b4e28ba-2fa1-1d3b-a3f5-ef19b5a7633b",  /* version 1 */
        "1b4e28ba-2fa1-4d3b-c3f5-ef19b5a7633b",  /* variant */
        "1b4e28ba2fa1-4d3b-a3f5-ef19b5a7633b-",  /* dash placement */
        "1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633",   /* short */
        "1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633bb", /* long */
        "1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633g",  /* not hex */
        "../../../../etc/passwd/../../../../..", "", "00000000-0000-4000-8000-00000000000g",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (sep_id_valid(bad[i], strlen(bad[i])))
            fail_msg("accepted bad id '%s'", bad[i]);
    }
    assert_false(sep_id_valid(NULL, 36));
    /* A valid id followed by more bytes is judged by the given length only. */
    char withnul[40];
    memcpy(withnul, good, 36);
    withnul[36] = 'x';
    assert_true(sep_id_valid(withnul, 36));
    assert_false(sep_id_valid(withnul, 37));
}

static void test_key_builders(void **state)
{
    (void)state;
    char buf[SEP_KEY_MAX];
    sep_str_t p = SEP_STR("sep:");
    sep_str_t id = SEP_STR("1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b");
    size_t n;

    n = sep_key_job(buf, sizeof(buf), p, id);
    assert_string_equal(buf, "sep:job:1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b");
    assert_int_equal(n, strlen(buf));
    sep_key_queue(buf, sizeof(buf), p, SEP_PRIORITY_HIGH);
    assert_string_equal(buf, "sep:q:high");
    sep_key_queue(buf, sizeof(buf), p, SEP_PRIORITY_NORMAL);
    assert_string_equal(buf, "sep:q:normal");
    sep_key_delayed(buf, sizeof(buf), p);
    assert_string_equal(buf, "sep:delayed");
    sep_key_dead(buf, sizeof(buf), p);
    assert_string_equal(buf, "sep:dead");
    sep_key_events(buf, sizeof(buf), p, id);
    assert_string_equal(buf, "sep:ev:1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b");
    sep_key_worker(buf, sizeof(buf), p, SEP_STR("gpu-1/0"));
    assert_string_equal(buf, "sep:worker:gpu-1/0");
    sep_key_workers(buf, sizeof(buf), p);
    assert_string_equal(buf, "sep:workers");
    sep_key_stats(buf, sizeof(buf), p);
    assert_string_equal(buf, "sep:stats");
    sep_key_idem(buf, sizeof(buf), p, SEP_STR("order-42"));
    assert_string_equal(buf, "sep:idem:order-42");

    sep_key_running(buf, sizeof(buf), p);
    assert_string_equal(buf, "sep:running");
    sep_key_expiry(buf, sizeof(buf), p);
    assert_string_equal(buf, "sep:expiry");

    sep_key_stats(buf, sizeof(buf), SEP_STR("tenant{7}:"));
    assert_string_equal(buf, "tenant{7}:stats");
    /* the default prefix is a Redis Cluster hash tag */
    assert_string_equal(SEP_DEFAULT_PREFIX, "{sep}:");
}

static void test_job_script_keys(void **state)
{
    (void)state;
    static const char *const want[SEP_JOB_KEYS] = {"{sep}:job:1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b",
                                                   "{sep}:stats",
                                                   "{sep}:q:high",
                                                   "{sep}:q:normal",
                                                   "{sep}:delayed",
                                                   "{sep}:running",
                                                   "{sep}:expiry",
                                                   "{sep}:dead"};
    sep_job_keys_t keys;
    assert_int_equal(sep_job_keys(&keys, SEP_STR(SEP_DEFAULT_PREFIX),
                                  SEP_STR("1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b")),
                     0);
    for (int i = 0; i < SEP_JOB_KEYS; i++) {
        assert_string_equal(keys.key[i], want[i]);
        assert_int_equal(keys.len[i], strlen(want[i]));
    }
    assert_int_equal(sep_job_keys(&keys, SEP_STR(SEP_DEFAULT_PREFIX), SEP_STR("")), -1);
}

static void test_key_builders_refuse_overflow_and_bad_parts(void **state)
{
    (void)state;
    char small[12];
    sep_str_t p = SEP_STR("sep:");
    assert_int_equal(sep_key_job(small, sizeof(small), p, SEP_STR("0123456789")), 0);
    assert_int_equal(sep_key_stats(small, sizeof(small), p), strlen("sep:stats"));
    /* exactly cap - 1 bytes fits, cap does not */
    assert_int_equal(sep_key_dead(small, 9, p), 8);
    assert_int_equal(sep_key_dead(small, 8, p), 0);
    char buf[SEP_KEY_MAX];
    assert_int_equal(sep_key_job(buf, sizeof(buf), p, SEP_STR("")), 0);
    assert_int_equal(sep_key_idem(buf, sizeof(buf), p, SEP_STR("has space")), 0);
    char long_part[SEP_KEY_PART_MAX + 2];
    memset(long_part, 'k', sizeof(long_part));
    assert_int_equal(sep_key_idem(buf, sizeof(buf), p, (sep_str_t){long_part, SEP_KEY_PART_MAX}),
                     4 + 5 + SEP_KEY_PART_MAX);
    assert_int_equal(
        sep_key_idem(buf, sizeof(buf), p, (sep_str_t){long_part, SEP_KEY_PART_MAX + 1}), 0);
}

static void test_prefix_and_idempotency_key_rules(void **state)
{
    (void)state;
    assert_true(sep_prefix_valid(SEP_STR("sep:")));
    assert_true(sep_prefix_valid(SEP_STR("{sep}:")));
    assert_false(sep_prefix_valid(SEP_STR("")));
    assert_false(sep_prefix_valid(SEP_STR("has space:")));
    assert_false(sep_prefix_valid(SEP_STR("tab\t")));
    char long_prefix[SEP_PREFIX_MAX + 1];
    memset(long_prefix, 'p', sizeof(long_prefix));
    assert_true(sep_prefix_valid((sep_str_t){long_prefix, SEP_PREFIX_MAX}));
    assert_false(sep_prefix_valid((sep_str_t){long_prefix, SEP_PREFIX_MAX + 1}));

    assert_true(sep_idempotency_key_valid(SEP_STR("a")));
    assert_true(sep_idempotency_key_valid(SEP_STR("9f1c-!~")));
    assert_false(sep_idempotency_key_valid(SEP_STR("")));
    assert_false(sep_idempotency_key_valid(SEP_STR("new\nline")));
    assert_false(sep_idempotency_key_valid(SEP_STR("caf\xc3\xa9")));
}

static void test_priority_names(void **state)
{
    (void)state;
    sep_priority_t p;
    assert_int_equal(sep_priority_from_name(SEP_STR("high"), &p), 0);
    assert_int_equal(p, SEP_PRIORITY_HIGH);
    assert_int_equal(sep_priority_from_name(SEP_STR("normal"), &p), 0);
    assert_int_equal(p, SEP_PRIORITY_NORMAL);
    assert_int_equal(sep_priority_from_name(SEP_STR("HIGH"), &p), -1);
    assert_int_equal(sep_priority_from_name(SEP_STR("urgent"), &p), -1);
    assert_string_equal(sep_priority_name(SEP_PRIORITY_HIGH), "high");
    assert_string_equal(sep_priority_name(SEP_PRIORITY_NORMAL), "normal");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generated_ids_are_valid_and_unique),
        cmocka_unit_test(test_id_validation),
        cmocka_unit_test(test_key_builders),
        cmocka_unit_test(test_job_script_keys),
        cmocka_unit_test(test_key_builders_refuse_overflow_and_bad_parts),
        cmocka_unit_test(test_prefix_and_idempotency_key_rules),
        cmocka_unit_test(test_priority_names),
    };
    return cmocka_run_group_tests_name("ids_keys", tests, NULL, NULL);
}
