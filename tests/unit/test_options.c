/*
 * Unit tests of submission option validation (shared/sep_options.c): defaults,
 * every accepted value, every refusal with its message, duplicates, rules that
 * span two options in either order, and the output stem lists.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "shared/sep_options.h"

static sep_option_result_t set(sep_options_t *o, const char *name, const char *value, char *err)
{
    return sep_options_set(o, sep_str_from_cstr(name), sep_str_from_cstr(value), err, 256);
}

static void test_defaults(void **state)
{
    (void)state;
    sep_options_t o;
    char err[256];
    sep_options_init(&o, SEP_MODEL_HTDEMUCS_FT);
    assert_int_equal(sep_options_finish(&o, err, sizeof(err)), 0);
    assert_int_equal(o.model, SEP_MODEL_HTDEMUCS_FT);
    assert_int_equal(o.two_stem_source, -1);
    assert_string_equal(sep_options_stems_name(&o), "all");
    assert_int_equal(o.format, SEP_FORMAT_WAV);
    assert_int_equal(o.priority, SEP_PRIORITY_NORMAL);
    assert_int_equal(o.shifts, 1);
    assert_true(o.overlap == 0.25);
}

static void test_all_valid_values(void **state)
{
    (void)state;
    char err[256];
    sep_options_t o;
    sep_options_init(&o, SEP_MODEL_HTDEMUCS);
    assert_int_equal(set(&o, "model", "htdemucs_6s", err), SEP_OPTION_OK);
    assert_int_equal(set(&o, "stems", "piano", err), SEP_OPTION_OK);
    assert_int_equal(set(&o, "format", "flac", err), SEP_OPTION_OK);
    assert_int_equal(set(&o, "priority", "high", err), SEP_OPTION_OK);
    assert_int_equal(set(&o, "shifts", "10", err), SEP_OPTION_OK);
    assert_int_equal(set(&o, "overlap", "0.5", err), SEP_OPTION_OK);
    assert_int_equal(sep_options_finish(&o, err, sizeof(err)), 0);
    assert_int_equal(o.model, SEP_MODEL_HTDEMUCS_6S);
    assert_int_equal(o.two_stem_source, 5);
    assert_string_equal(sep_options_stems_name(&o), "piano");
    assert_int_equal(o.format, SEP_FORMAT_FLAC);
    assert_int_equal(o.priority, SEP_PRIORITY_HIGH);
    assert_int_equal(o.shifts, 10);
    assert_true(o.overlap == 0.5);

    static const char *const formats[] = {"wav", "wav24", "f32", "flac"};
    for (int f = 0; f < 4; f++) {
        sep_options_init(&o, SEP_MODEL_HTDEMUCS);
        assert_int_equal(set(&o, "format", formats[f], err), SEP_OPTION_OK);
        assert_string_equal(sep_format_name(o.format), formats[f]);
    }
    assert_string_equal(sep_format_ext(SEP_FORMAT_WAV24), "wav");
    assert_string_equal(sep_format_ext(SEP_FORMAT_F32), "wav");
    assert_string_equal(sep_format_ext(SEP_FORMAT_FLAC), "flac");

    static const char *const overlaps[] = {"0", "0.0", "0.98", "0.989", "2.5e-1", ".3"};
    for (size_t i = 0; i < sizeof(overlaps) / sizeof(overlaps[0]); i++) {
        sep_options_init(&o, SEP_MODEL_HTDEMUCS);
        if (set(&o, "overlap", overlaps[i], err) != SEP_OPTION_OK)
            fail_msg("overlap %s refused: %s", overlaps[i], err);
    }
    sep_options_init(&o, SEP_MODEL_HTDEMUCS);
    assert_int_equal(set(&o, "shifts", "0", err), SEP_OPTION_OK);
    assert_int_equal(o.shifts, 0);
}

static void test_refusals_with_messages(void **state)
{
    (void)state;
    static const struct {
        const char *name, *value, *needle;
    } cases[] = {
        {"model", "nope", "model must be one of htdemucs, htdemucs_6s, htdemucs_ft (got 'nope')"},
        {"model", "", "model must be one of"},
        {"model", "HTDEMUCS", "model must be one of"},
        {"format", "mp4", "format must be one of wav, wav24, f32, flac (got 'mp4')"},
        {"priority", "urgent", "priority must be high or normal (got 'urgent')"},
        {"shifts", "-1", "shifts must be an integer from 0 to 10 (got '-1')"},
        {"shifts", "abc", "shifts must be an integer"},
        {"shifts", "1000", "shifts must be an integer"},
        {"shifts", "11", "shifts must be an integer"},
        {"shifts", "1.5", "shifts must be an integer"},
        {"shifts", "", "shifts must be an integer"},
        {"shifts", " 1", "shifts must be an integer"},
        {"overlap", "1.5",
         "overlap must be a number from 0 up to (not including) 0.99 (got '1.5')"},
        {"overlap", "0.99", "overlap must be"},
        {"overlap", "-0.1", "overlap must be"},
        {"overlap", "x", "overlap must be"},
        {"overlap", "nan", "overlap must be"},
        {"overlap", "inf", "overlap must be"},
        {"overlap", "0x0.1", "overlap must be"},
        {"overlap", "", "overlap must be"},
        {"overlap", "0.5 ", "overlap must be"},
        {"stems", "a-very-long-stem-name-indeed", "stems must be 'all'"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        sep_options_t o;
        char err[256] = "";
        sep_options_init(&o, SEP_MODEL_HTDEMUCS);
        sep_option_result_t r = set(&o, cases[i].name, cases[i].value, err);
        if (r != SEP_OPTION_INVALID || strstr(err, cases[i].needle) == NULL)
            fail_msg("%s=%s: result %d, message '%s'", cases[i].name, cases[i].value, r, err);
    }
}

static void test_quoted_values_are_sanitized(void **state)
{
    (void)state;
    sep_options_t o;
    char err[256];
    sep_options_init(&o, SEP_MODEL_HTDEMUCS);
    assert_int_equal(
        sep_options_set(&o, SEP_STR("model"), SEP_STR("a\"b\\c\n\x01"), err, sizeof(err)),
        SEP_OPTION_INVALID);
    assert_non_null(strstr(err, "(got 'a?b?c?"
                                "?')"));
    char long_value[100];
    memset(long_value, 'z', sizeof(long_value) - 1);
    long_value[99] = '\0';
    sep_options_init(&o, SEP_MODEL_HTDEMUCS);
    assert_int_equal(set(&o, "format", long_value, err), SEP_OPTION_INVALID);
    assert_non_null(strstr(err, "zzz...')"));
    assert_true(strlen(err) < 120);
}

static void test_duplicates_and_unknown(void **state)
{
    (void)state;
    sep_options_t o;
    char err[256];
    sep_options_init(&o, SEP_MODEL_HTDEMUCS);
    assert_int_equal(set(&o, "model", "htdemucs", err), SEP_OPTION_OK);
    assert_int_equal(set(&o, "model", "htdemucs", err), SEP_OPTION_INVALID);
    assert_non_null(strstr(err, "option 'model' is given more than once"));
    assert_int_equal(set(&o, "callback_url", "http://x", err), SEP_OPTION_UNKNOWN);
    assert_int_equal(set(&o, "Model", "htdemucs", err), SEP_OPTION_UNKNOWN);
}

static void test_stems_checked_against_model_in_any_order(void **state)
{
    (void)state;
    sep_options_t o;
    char err[256];
    /* stems first, model later */
    sep_options_init(&o, SEP_MODEL_HTDEMUCS);
    assert_int_equal(set(&o, "stems", "guitar", err), SEP_OPTION_OK);
    assert_int_equal(set(&o, "model", "htdemucs_6s", err), SEP_OPTION_OK);
    assert_int_equal(sep_options_finish(&o, err, sizeof(err)), 0);
    assert_string_equal(sep_options_stems_name(&o), "guitar");
    /* a 6s source with the default 4-source model */
    sep_options_init(&o, SEP_MODEL_HTDEMUCS);
    assert_int_equal(set(&o, "stems", "guitar", err), SEP_OPTION_OK);
    assert_int_equal(sep_options_finish(&o, err, sizeof(err)), -1);
    assert_string_equal(err, "stems must be 'all' or one source of htdemucs: drums, bass, "
                             "other, vocals (got 'guitar')");
    /* default model from the directive decides */
    sep_options_init(&o, SEP_MODEL_HTDEMUCS_6S);
    assert_int_equal(set(&o, "stems", "guitar", err), SEP_OPTION_OK);
    assert_int_equal(sep_options_finish(&o, err, sizeof(err)), 0);
    /* explicit all; unknown source; the stem of a two-stem output is not a source */
    sep_options_init(&o, SEP_MODEL_HTDEMUCS_FT);
    assert_int_equal(set(&o, "stems", "all", err), SEP_OPTION_OK);
    assert_int_equal(sep_options_finish(&o, err, sizeof(err)), 0);
    assert_int_equal(o.two_stem_source, -1);
    sep_options_init(&o, SEP_MODEL_HTDEMUCS);
    assert_int_equal(set(&o, "stems", "no_vocals", err), SEP_OPTION_OK);
    assert_int_equal(sep_options_finish(&o, err, sizeof(err)), -1);
    sep_options_init(&o, SEP_MODEL_HTDEMUCS);
    assert_int_equal(set(&o, "stems", "Vocals", err), SEP_OPTION_OK);
    assert_int_equal(sep_options_finish(&o, err, sizeof(err)), -1);
}

static void test_output_stems(void **state)
{
    (void)state;
    char names[SEP_MAX_STEMS][SEP_STEM_NAME_MAX];
    assert_int_equal(sep_output_stems(SEP_MODEL_HTDEMUCS, SEP_STR("all"), names), 4);
    assert_string_equal(names[0], "drums");
    assert_string_equal(names[3], "vocals");
    assert_int_equal(sep_output_stems(SEP_MODEL_HTDEMUCS_6S, SEP_STR_NULL, names), 6);
    assert_string_equal(names[4], "guitar");
    assert_string_equal(names[5], "piano");
    assert_int_equal(sep_output_stems(SEP_MODEL_HTDEMUCS, SEP_STR("vocals"), names), 2);
    assert_string_equal(names[0], "vocals");
    assert_string_equal(names[1], "no_vocals");
    assert_int_equal(sep_output_stems(SEP_MODEL_HTDEMUCS, SEP_STR("piano"), names), -1);

    assert_true(sep_output_stem_valid(SEP_MODEL_HTDEMUCS, SEP_STR("vocals"), SEP_STR("no_vocals")));
    assert_false(sep_output_stem_valid(SEP_MODEL_HTDEMUCS, SEP_STR("vocals"), SEP_STR("drums")));
    assert_true(sep_output_stem_valid(SEP_MODEL_HTDEMUCS, SEP_STR("all"), SEP_STR("drums")));
    assert_false(sep_output_stem_valid(SEP_MODEL_HTDEMUCS, SEP_STR("all"), SEP_STR("guitar")));
    assert_false(sep_output_stem_valid(SEP_MODEL_HTDEMUCS, SEP_STR("all"), SEP_STR("../x")));

    sep_model_t m;
    assert_int_equal(sep_model_from_name(SEP_STR("htdemucs_ft"), &m), 0);
    assert_int_equal(m, SEP_MODEL_HTDEMUCS_FT);
    assert_int_equal(sep_model_from_name(SEP_STR("htdemucs_"), &m), -1);
    assert_string_equal(sep_model_info(SEP_MODEL_HTDEMUCS_6S)->name, "htdemucs_6s");
    assert_null(sep_model_info(SEP_MODEL_COUNT));
}

static void test_format_double(void **state)
{
    (void)state;
    char buf[32];
    sep_format_double(buf, sizeof(buf), 0.25);
    assert_string_equal(buf, "0.25");
    sep_format_double(buf, sizeof(buf), 0.1);
    assert_string_equal(buf, "0.1");
    sep_format_double(buf, sizeof(buf), 0);
    assert_string_equal(buf, "0");
    sep_format_double(buf, sizeof(buf), 1.0 / 3.0);
    assert_true(strtod(buf, NULL) == 1.0 / 3.0);
    sep_format_double(buf, sizeof(buf), 44100);
    assert_string_equal(buf, "44100");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_all_valid_values),
        cmocka_unit_test(test_refusals_with_messages),
        cmocka_unit_test(test_quoted_values_are_sanitized),
        cmocka_unit_test(test_duplicates_and_unknown),
        cmocka_unit_test(test_stems_checked_against_model_in_any_order),
        cmocka_unit_test(test_output_stems),
        cmocka_unit_test(test_format_double),
    };
    return cmocka_run_group_tests_name("options", tests, NULL, NULL);
}
