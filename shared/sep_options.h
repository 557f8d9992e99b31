/*
 * Submission options: the models and their sources, output formats, and the
 * validation of every option a client may send (query args or form fields).
 *
 *   model     htdemucs | htdemucs_6s | htdemucs_ft         (default: configurable)
 *   stems     all | one source of the model (two-stem mode: "vocals" gives the
 *             stems "vocals" and "no_vocals")                (default all)
 *   format    wav (16-bit PCM) | wav24 | f32 (float WAV) | flac (default wav)
 *   priority  high | normal                                  (default normal)
 *   shifts    integer 0..10, as demucs --shifts              (default 1, demucs' own)
 *   overlap   number in [0, 0.99)                            (default 0.25)
 *
 * Options are set one by one (sep_options_set), in any order; rules that involve
 * two options (stems must be a source of the model) are checked by
 * sep_options_finish once all are in. Every refusal comes with a message meant for
 * the client, naming the option and what is allowed.
 */
#ifndef SEP_OPTIONS_H
#define SEP_OPTIONS_H

#include <stddef.h>

#include "shared/sep_keys.h"
#include "shared/sep_str.h"

typedef enum sep_model {
    SEP_MODEL_HTDEMUCS = 0,
    SEP_MODEL_HTDEMUCS_6S,
    SEP_MODEL_HTDEMUCS_FT,
    SEP_MODEL_COUNT
} sep_model_t;

#define SEP_MAX_SOURCES 6
/* Most stems one job can produce: every source of the largest model. */
#define SEP_MAX_STEMS SEP_MAX_SOURCES
#define SEP_STEM_NAME_MAX 16 /* "no_vocals" and the like, NUL included */

typedef struct sep_model_info {
    const char *name;
    unsigned n_sources;
    const char *sources[SEP_MAX_SOURCES]; /* in the model's output order */
} sep_model_info_t;

typedef enum sep_format {
    SEP_FORMAT_WAV = 0, /* 16-bit PCM WAV */
    SEP_FORMAT_WAV24,   /* 24-bit PCM WAV */
    SEP_FORMAT_F32,     /* 32-bit float WAV */
    SEP_FORMAT_FLAC,
    SEP_FORMAT_COUNT
} sep_format_t;

#define SEP_SHIFTS_MAX 10
#define SEP_SHIFTS_DEFAULT 1
#define SEP_OVERLAP_DEFAULT 0.25
#define SEP_OVERLAP_LIMIT 0.99

const sep_model_info_t *sep_model_info(sep_model_t model);
int sep_model_from_name(sep_str_t name, sep_model_t *out); /* 0 or -1 */
/* Index of source in the model's list, or -1. */
int sep_model_source_index(sep_model_t model, sep_str_t source);

const char *sep_format_name(sep_format_t format);
/* File extension of stems in this format: "wav" or "flac". */
const char *sep_format_ext(sep_format_t format);
int sep_format_from_name(sep_str_t name, sep_format_t *out); /* 0 or -1 */

typedef struct sep_options {
    sep_model_t model;
    int two_stem_source; /* -1: all sources; else index into the model's sources */
    sep_format_t format;
    sep_priority_t priority;
    int shifts;
    double overlap;

    /* bookkeeping while options are being set */
    unsigned given;                     /* bit per option already set (duplicates are errors) */
    char stems_text[SEP_STEM_NAME_MAX]; /* raw "stems" value until finish */
    size_t stems_len;
    int stems_too_long;
} sep_options_t;

typedef enum sep_option_result {
    SEP_OPTION_OK = 0,
    SEP_OPTION_UNKNOWN = 1, /* not an option name: callers ignore it */
    SEP_OPTION_INVALID = -1 /* message written to err */
} sep_option_result_t;

void sep_options_init(sep_options_t *opts, sep_model_t default_model);

/* Sets one option from its text name and value. */
sep_option_result_t sep_options_set(sep_options_t *opts, sep_str_t name, sep_str_t value, char *err,
                                    size_t err_cap);

/* Checks the rules spanning several options. 0, or -1 with a message in err. */
int sep_options_finish(sep_options_t *opts, char *err, size_t err_cap);

/* The "stems" option as text: "all" or the source name. Valid after finish. */
const char *sep_options_stems_name(const sep_options_t *opts);

/* Writes the overlap as the shortest text that reads back to the same double. */
size_t sep_format_double(char *buf, size_t cap, double value);

/*
 * The output stem names a job produces for a model and stems option ("all" or a
 * source name), in order: the model's sources, or {source, "no_" source}. Writes up
 * to SEP_MAX_STEMS names into names[i] (each SEP_STEM_NAME_MAX bytes) and returns
 * how many, or -1 when stems_option is not valid for the model.
 */
int sep_output_stems(sep_model_t model, sep_str_t stems_option,
                     char names[SEP_MAX_STEMS][SEP_STEM_NAME_MAX]);

/* 1 when stem is one of the outputs of (model, stems_option). */
int sep_output_stem_valid(sep_model_t model, sep_str_t stems_option, sep_str_t stem);

#endif
