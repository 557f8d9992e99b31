/*
 * Option validation for submissions (rules in sep_options.h). Client values are
 * quoted back in error messages only after being cut to a short, printable form.
 */
#include "shared/sep_options.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const sep_model_info_t sep_models[SEP_MODEL_COUNT] = {
    [SEP_MODEL_HTDEMUCS] = {"htdemucs", 4, {"drums", "bass", "other", "vocals"}},
    [SEP_MODEL_HTDEMUCS_6S] = {"htdemucs_6s",
                               6,
                               {"drums", "bass", "other", "vocals", "guitar", "piano"}},
    [SEP_MODEL_HTDEMUCS_FT] = {"htdemucs_ft", 4, {"drums", "bass", "other", "vocals"}},
};

static const char *const sep_format_names[SEP_FORMAT_COUNT] = {
    [SEP_FORMAT_WAV] = "wav",
    [SEP_FORMAT_WAV24] = "wav24",
    [SEP_FORMAT_F32] = "f32",
    [SEP_FORMAT_FLAC] = "flac",
};

enum {
    SEP_GIVEN_MODEL = 1u << 0,
    SEP_GIVEN_STEMS = 1u << 1,
    SEP_GIVEN_FORMAT = 1u << 2,
    SEP_GIVEN_PRIORITY = 1u << 3,
    SEP_GIVEN_SHIFTS = 1u << 4,
    SEP_GIVEN_OVERLAP = 1u << 5,
};

const sep_model_info_t *sep_model_info(sep_model_t model)
{
    if ((unsigned)model >= SEP_MODEL_COUNT)
        return NULL;
    return &sep_models[model];
}

int sep_model_from_name(sep_str_t name, sep_model_t *out)
{
    for (int m = 0; m < SEP_MODEL_COUNT; m++) {
        if (sep_str_eq(name, sep_models[m].name)) {
            *out = (sep_model_t)m;
            return 0;
        }
    }
    return -1;
}

int sep_model_source_index(sep_model_t model, sep_str_t source)
{
    const sep_model_info_t *info = sep_model_info(model);
    if (info == NULL)
        return -1;
    for (unsigned i = 0; i < info->n_sources; i++) {
        if (sep_str_eq(source, info->sources[i]))
            return (int)i;
    }
    return -1;
}

const char *sep_format_name(sep_format_t format)
{
    return (unsigned)format < SEP_FORMAT_COUNT ? sep_format_names[format] : NULL;
}

const char *sep_format_ext(sep_format_t format)
{
    return format == SEP_FORMAT_FLAC ? "flac" : "wav";
}

int sep_format_from_name(sep_str_t name, sep_format_t *out)
{
    for (int f = 0; f < SEP_FORMAT_COUNT; f++) {
        if (sep_str_eq(name, sep_format_names[f])) {
            *out = (sep_format_t)f;
            return 0;
        }
    }
    return -1;
}

void sep_options_init(sep_options_t *opts, sep_model_t default_model)
{
    memset(opts, 0, sizeof(*opts));
    opts->model = default_model;
    opts->two_stem_source = -1;
    opts->format = SEP_FORMAT_WAV;
    opts->priority = SEP_PRIORITY_NORMAL;
    opts->shifts = SEP_SHIFTS_DEFAULT;
    opts->overlap = SEP_OVERLAP_DEFAULT;
}

/* A client value made safe to quote: at most 32 bytes, non-printable bytes as '?'. */
static void sep_quote_value(char out[40], sep_str_t value)
{
    size_t n = value.len > 32 ? 32 : value.len;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)value.ptr[i];
        out[i] = (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? (char)c : '?';
    }
    if (value.len > 32) {
        memcpy(out + n, "...", 3);
        n += 3;
    }
    out[n] = '\0';
}

static sep_option_result_t sep_option_fail(char *err, size_t err_cap, const char *fmt,
                                           sep_str_t value)
{
    char quoted[40];
    sep_quote_value(quoted, value);
    snprintf(err, err_cap, fmt, quoted);
    return SEP_OPTION_INVALID;
}

static int sep_parse_shifts(sep_str_t value, int *out)
{
    if (value.len == 0 || value.len > 2)
        return -1;
    int n = 0;
    for (size_t i = 0; i < value.len; i++) {
        if (value.ptr[i] < '0' || value.ptr[i] > '9')
            return -1;
        n = n * 10 + (value.ptr[i] - '0');
    }
    if (n > SEP_SHIFTS_MAX)
        return -1;
    *out = n;
    return 0;
}

/* A plain decimal number (digits, one point, optional exponent); no hex, inf, nan,
 * spaces or signs other than a leading '-' and an exponent sign. */
static int sep_parse_decimal(sep_str_t value, double *out)
{
    char text[40];
    if (value.len == 0 || value.len >= sizeof(text))
        return -1;
    for (size_t i = 0; i < value.len; i++) {
        char c = value.ptr[i];
        if (!((c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '-' || c == '+'))
            return -1;
    }
    memcpy(text, value.ptr, value.len);
    text[value.len] = '\0';
    char *end = NULL;
    double d = strtod(text, &end);
    if (end != text + value.len || !isfinite(d))
        return -1;
    *out = d;
    return 0;
}

sep_option_result_t sep_options_set(sep_options_t *opts, sep_str_t name, sep_str_t value, char *err,
                                    size_t err_cap)
{
    unsigned bit;
    if (sep_str_eq(name, "model"))
        bit = SEP_GIVEN_MODEL;
    else if (sep_str_eq(name, "stems"))
        bit = SEP_GIVEN_STEMS;
    else if (sep_str_eq(name, "format"))
        bit = SEP_GIVEN_FORMAT;
    else if (sep_str_eq(name, "priority"))
        bit = SEP_GIVEN_PRIORITY;
    else if (sep_str_eq(name, "shifts"))
        bit = SEP_GIVEN_SHIFTS;
    else if (sep_str_eq(name, "overlap"))
        bit = SEP_GIVEN_OVERLAP;
    else
        return SEP_OPTION_UNKNOWN;

    if (opts->given & bit)
        return sep_option_fail(err, err_cap, "option '%s' is given more than once", name);
    opts->given |= bit;

    switch (bit) {
    case SEP_GIVEN_MODEL:
        if (sep_model_from_name(value, &opts->model) != 0)
            return sep_option_fail(err, err_cap,
                                   "model must be one of htdemucs, htdemucs_6s, htdemucs_ft "
                                   "(got '%s')",
                                   value);
        break;
    case SEP_GIVEN_STEMS:
        /* Checked against the model in sep_options_finish: the model may come later. */
        if (value.len >= sizeof(opts->stems_text)) {
            opts->stems_too_long = 1;
            return sep_option_fail(
                err, err_cap, "stems must be 'all' or one source of the model (got '%s')", value);
        }
        if (value.len) /* an empty value may have no bytes at all (ptr NULL) */
            memcpy(opts->stems_text, value.ptr, value.len);
        opts->stems_text[value.len] = '\0';
        opts->stems_len = value.len;
        break;
    case SEP_GIVEN_FORMAT:
        if (sep_format_from_name(value, &opts->format) != 0)
            return sep_option_fail(err, err_cap,
                                   "format must be one of wav, wav24, f32, flac (got '%s')", value);
        break;
    case SEP_GIVEN_PRIORITY:
        if (sep_priority_from_name(value, &opts->priority) != 0)
            return sep_option_fail(err, err_cap, "priority must be high or normal (got '%s')",
                                   value);
        break;
    case SEP_GIVEN_SHIFTS:
        if (sep_parse_shifts(value, &opts->shifts) != 0)
            return sep_option_fail(err, err_cap,
                                   "shifts must be an integer from 0 to 10 (got '%s')", value);
        break;
    case SEP_GIVEN_OVERLAP: {
        double d;
        if (sep_parse_decimal(value, &d) != 0 || !(d >= 0.0 && d < SEP_OVERLAP_LIMIT))
            return sep_option_fail(err, err_cap,
                                   "overlap must be a number from 0 up to (not including) "
                                   "0.99 (got '%s')",
                                   value);
        opts->overlap = d;
        break;
    }
    }
    return SEP_OPTION_OK;
}

int sep_options_finish(sep_options_t *opts, char *err, size_t err_cap)
{
    opts->two_stem_source = -1;
    if (!(opts->given & SEP_GIVEN_STEMS))
        return 0;
    sep_str_t stems = {opts->stems_text, opts->stems_len};
    if (!opts->stems_too_long && sep_str_eq(stems, "all"))
        return 0;
    int index = opts->stems_too_long ? -1 : sep_model_source_index(opts->model, stems);
    if (index < 0) {
        const sep_model_info_t *info = sep_model_info(opts->model);
        char sources[96] = "";
        size_t used = 0;
        for (unsigned i = 0; i < info->n_sources; i++) {
            int n = snprintf(sources + used, sizeof(sources) - used, "%s%s", i ? ", " : "",
                             info->sources[i]);
            if (n > 0)
                used += (size_t)n;
        }
        char quoted[40];
        sep_quote_value(quoted, stems);
        snprintf(err, err_cap, "stems must be 'all' or one source of %s: %s (got '%s')", info->name,
                 sources, quoted);
        return -1;
    }
    opts->two_stem_source = index;
    return 0;
}

const char *sep_options_stems_name(const sep_options_t *opts)
{
    if (opts->two_stem_source < 0)
        return "all";
    return sep_model_info(opts->model)->sources[opts->two_stem_source];
}

size_t sep_format_double(char *buf, size_t cap, double value)
{
    /* 15 significant digits read back exactly for most values we print (0.25,
     * 7.912); 17 always does. */
    for (int precision = 15; precision <= 17; precision++) {
        int n = snprintf(buf, cap, "%.*g", precision, value);
        if (n < 0 || (size_t)n >= cap)
            return 0;
        if (strtod(buf, NULL) == value)
            return (size_t)n;
    }
    return strlen(buf);
}

int sep_output_stems(sep_model_t model, sep_str_t stems_option,
                     char names[SEP_MAX_STEMS][SEP_STEM_NAME_MAX])
{
    const sep_model_info_t *info = sep_model_info(model);
    if (info == NULL)
        return -1;
    if (!sep_str_is_set(stems_option) || sep_str_eq(stems_option, "all")) {
        for (unsigned i = 0; i < info->n_sources; i++)
            snprintf(names[i], SEP_STEM_NAME_MAX, "%s", info->sources[i]);
        return (int)info->n_sources;
    }
    int index = sep_model_source_index(model, stems_option);
    if (index < 0)
        return -1;
    snprintf(names[0], SEP_STEM_NAME_MAX, "%s", info->sources[index]);
    snprintf(names[1], SEP_STEM_NAME_MAX, "no_%s", info->sources[index]);
    return 2;
}

int sep_output_stem_valid(sep_model_t model, sep_str_t stems_option, sep_str_t stem)
{
    char names[SEP_MAX_STEMS][SEP_STEM_NAME_MAX];
    int n = sep_output_stems(model, stems_option, names);
    for (int i = 0; i < n; i++) {
        if (sep_str_eq(stem, names[i]))
            return 1;
    }
    return 0;
}
