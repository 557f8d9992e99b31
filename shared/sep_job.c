/*
 * The job record: hash fields -> sep_job_t -> public JSON, and back (see sep_job.h).
 *
 * Fields are dispatched through one table (name, kind, offset), so adding a field
 * is one line here plus its place in the rendered shape.
 */
#include "shared/sep_job.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "shared/sep_id.h"
#include "shared/sep_json.h"

enum sep_field_kind { SEP_FK_STR, SEP_FK_DOUBLE, SEP_FK_INT, SEP_FK_FLAG, SEP_FK_TRISTATE };

typedef struct sep_job_field {
    const char *name;
    size_t name_len;
    enum sep_field_kind kind;
    size_t offset;
    size_t text_offset; /* doubles: where their text goes (0: nowhere) */
} sep_job_field_t;

/* clang-format off */
#define SEP_FIELD(name, kind, member) \
    {name, sizeof(name) - 1, kind, offsetof(sep_job_t, member), 0}
#define SEP_NUMBER(name, member, text) \
    {name, sizeof(name) - 1, SEP_FK_DOUBLE, offsetof(sep_job_t, member), offsetof(sep_job_t, text)}
/* clang-format on */

static const sep_job_field_t sep_job_fields[] = {
    SEP_FIELD("id", SEP_FK_STR, id),
    SEP_FIELD("status", SEP_FK_STR, status),
    SEP_NUMBER("progress", progress, progress_text),
    SEP_FIELD("stage", SEP_FK_STR, stage),
    SEP_FIELD("message", SEP_FK_STR, message),
    SEP_FIELD("attempts", SEP_FK_INT, attempts),
    SEP_FIELD("max_attempts", SEP_FK_INT, max_attempts),
    SEP_FIELD("result_ttl", SEP_FK_INT, result_ttl),
    SEP_FIELD("created_at", SEP_FK_INT, created_at),
    SEP_FIELD("started_at", SEP_FK_INT, started_at),
    SEP_FIELD("finished_at", SEP_FK_INT, finished_at),
    SEP_FIELD("model", SEP_FK_STR, model),
    SEP_FIELD("stems_option", SEP_FK_STR, stems_option),
    SEP_FIELD("format", SEP_FK_STR, format),
    SEP_FIELD("priority", SEP_FK_STR, priority),
    SEP_FIELD("shifts", SEP_FK_INT, shifts),
    SEP_NUMBER("overlap", overlap, overlap_text),
    SEP_FIELD("input", SEP_FK_STR, input),
    SEP_FIELD("input_type", SEP_FK_STR, input_type),
    SEP_FIELD("input_bytes", SEP_FK_INT, input_bytes),
    SEP_FIELD("stream_id", SEP_FK_STR, stream_id),
    SEP_FIELD("worker", SEP_FK_STR, worker),
    SEP_NUMBER("audio_seconds", audio_seconds, audio_seconds_text),
    SEP_FIELD("audio_sample_rate", SEP_FK_INT, audio_sample_rate),
    SEP_FIELD("audio_channels", SEP_FK_INT, audio_channels),
    SEP_FIELD("error_code", SEP_FK_STR, error_code),
    SEP_FIELD("error_message", SEP_FK_STR, error_message),
    SEP_FIELD("error_retryable", SEP_FK_TRISTATE, error_retryable),
    SEP_FIELD("stems", SEP_FK_STR, stems_json),
    SEP_NUMBER("timing_queued_s", timing_queued_s, timing_queued_text),
    SEP_NUMBER("timing_decode_s", timing_decode_s, timing_decode_text),
    SEP_NUMBER("timing_separate_s", timing_separate_s, timing_separate_text),
    SEP_NUMBER("timing_encode_s", timing_encode_s, timing_encode_text),
    SEP_FIELD("cancel_requested", SEP_FK_FLAG, cancel_requested),
    SEP_FIELD("files_deleted", SEP_FK_FLAG, files_deleted),
};

#define SEP_N_FIELDS (sizeof(sep_job_fields) / sizeof(sep_job_fields[0]))

void sep_job_init(sep_job_t *job)
{
    memset(job, 0, sizeof(*job));
    job->progress = NAN;
    job->overlap = NAN;
    job->audio_seconds = NAN;
    job->timing_queued_s = NAN;
    job->timing_decode_s = NAN;
    job->timing_separate_s = NAN;
    job->timing_encode_s = NAN;
    job->attempts = -1;
    job->max_attempts = -1;
    job->result_ttl = -1;
    job->created_at = -1;
    job->started_at = -1;
    job->finished_at = -1;
    job->shifts = -1;
    job->input_bytes = -1;
    job->audio_sample_rate = -1;
    job->audio_channels = -1;
    job->error_retryable = -1;
}

void sep_job_clear(sep_job_t *job)
{
    if (job->stems_doc)
        json_decref(job->stems_doc);
    job->stems_doc = NULL;
    job->n_stems = 0;
}

static int sep_parse_double(sep_str_t v, double *out)
{
    char tmp[48];
    if (v.len == 0 || v.len >= sizeof(tmp))
        return -1;
    memcpy(tmp, v.ptr, v.len);
    tmp[v.len] = '\0';
    char *end;
    double d = strtod(tmp, &end);
    if (end != tmp + v.len || !isfinite(d))
        return -1;
    *out = d;
    return 0;
}

/* A decimal integer with an optional '-', at most 18 digits (no overflow). */
static int sep_parse_int(sep_str_t v, long long *out)
{
    size_t i = 0;
    int negative = 0;
    long long n = 0;
    if (v.len > 0 && v.ptr[0] == '-') {
        negative = 1;
        i = 1;
    }
    if (v.len == i || v.len - i > 18)
        return -1;
    for (; i < v.len; i++) {
        if (v.ptr[i] < '0' || v.ptr[i] > '9')
            return -1;
        n = n * 10 + (v.ptr[i] - '0');
    }
    *out = negative ? -n : n;
    return 0;
}

/* 1 when s is a number in JSON's grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
 * that clients read back as the same value: an integer of more than 15 digits is not
 * (parsers that read integers as int64, or refuse big ones, would fail on it), so it is
 * formatted from its double instead of copied. */
static int sep_is_json_number(sep_str_t s)
{
    const char *p = s.ptr, *end = s.ptr + s.len;
    if (p < end && *p == '-')
        p++;
    if (p == end)
        return 0;
    const char *int_start = p;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    } else {
        return 0;
    }
    if (p == end && p - int_start > 15)
        return 0;
    if (p < end && *p == '.') {
        const char *digits = ++p;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        if (p == digits)
            return 0;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        const char *digits = p;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        if (p == digits)
            return 0;
    }
    return p == end;
}

/* A stem file name is used in a URL and, by the download handler, in a path; the
 * record only lists names that are plain files in the job's directory. */
static int sep_stem_file_safe(const char *s, size_t n)
{
    if (n == 0 || n > 64 || s[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.'))
            return 0;
    }
    return 1;
}

static void sep_job_parse_stems(sep_job_t *job)
{
    sep_job_clear(job);
    if (job->stems_json.len == 0)
        return;
    json_t *doc = json_loadb(job->stems_json.ptr, job->stems_json.len, 0, NULL);
    if (!json_is_object(doc)) {
        json_decref(doc);
        return;
    }
    job->stems_doc = doc;
    const char *name;
    json_t *entry;
    json_object_foreach(doc, name, entry)
    {
        if (job->n_stems == SEP_MAX_STEMS)
            break;
        json_t *file = json_object_get(entry, "file");
        json_t *bytes = json_object_get(entry, "bytes");
        if (!json_is_string(file))
            continue;
        const char *f = json_string_value(file);
        size_t flen = json_string_length(file);
        if (!sep_stem_file_safe(f, flen))
            continue;
        sep_job_stem_t *stem = &job->stems[job->n_stems++];
        stem->name = sep_str_from_cstr(name);
        stem->file = (sep_str_t){f, flen};
        stem->bytes = json_is_integer(bytes) ? (long long)json_integer_value(bytes) : -1;
    }
}

int sep_job_set_field(sep_job_t *job, sep_str_t name, sep_str_t value)
{
    for (size_t i = 0; i < SEP_N_FIELDS; i++) {
        const sep_job_field_t *f = &sep_job_fields[i];
        if (name.len != f->name_len || memcmp(name.ptr, f->name, name.len) != 0)
            continue;
        char *member = (char *)job + f->offset;
        switch (f->kind) {
        case SEP_FK_STR:
            *(sep_str_t *)member = value;
            if (member == (char *)&job->stems_json)
                sep_job_parse_stems(job);
            break;
        case SEP_FK_DOUBLE: {
            double d;
            int ok = sep_parse_double(value, &d) == 0;
            *(double *)member = ok ? d : NAN;
            if (f->text_offset)
                *(sep_str_t *)((char *)job + f->text_offset) =
                    ok && value.len < 32 && sep_is_json_number(value) ? value : SEP_STR_NULL;
            break;
        }
        case SEP_FK_INT: {
            long long n;
            *(long long *)member = sep_parse_int(value, &n) == 0 ? n : -1;
            break;
        }
        case SEP_FK_FLAG:
            *(int *)member = sep_str_eq(value, "1") || sep_str_eq(value, "true");
            break;
        case SEP_FK_TRISTATE:
            if (sep_str_eq(value, "1") || sep_str_eq(value, "true"))
                *(int *)member = 1;
            else if (sep_str_eq(value, "0") || sep_str_eq(value, "false"))
                *(int *)member = 0;
            else
                *(int *)member = -1;
            break;
        }
        return 0;
    }
    return 1;
}

int sep_job_from_fields(sep_job_t *job, size_t n, const char *const *items, const size_t *lens)
{
    if (n % 2)
        return -1;
    for (size_t i = 0; i < n; i += 2) {
        sep_job_set_field(job, (sep_str_t){items[i], lens[i]},
                          (sep_str_t){items[i + 1], lens[i + 1]});
    }
    return 0;
}

int sep_job_exists(const sep_job_t *job)
{
    return job->id.len > 0 && job->status.len > 0;
}

static const char *const sep_status_names[] = {
    [SEP_STATUS_UNKNOWN] = "unknown", [SEP_STATUS_QUEUED] = "queued",
    [SEP_STATUS_RUNNING] = "running", [SEP_STATUS_COMPLETED] = "completed",
    [SEP_STATUS_FAILED] = "failed",   [SEP_STATUS_CANCELED] = "canceled",
};

sep_job_status_t sep_job_status(const sep_job_t *job)
{
    for (int s = SEP_STATUS_QUEUED; s <= SEP_STATUS_CANCELED; s++) {
        if (sep_str_eq(job->status, sep_status_names[s]))
            return (sep_job_status_t)s;
    }
    return SEP_STATUS_UNKNOWN;
}

const char *sep_job_status_name(sep_job_status_t status)
{
    return (unsigned)status <= SEP_STATUS_CANCELED ? sep_status_names[status] : "unknown";
}

const sep_job_stem_t *sep_job_find_stem(const sep_job_t *job, sep_str_t name)
{
    for (unsigned i = 0; i < job->n_stems; i++) {
        if (job->stems[i].name.len == name.len &&
            memcmp(job->stems[i].name.ptr, name.ptr, name.len) == 0)
            return &job->stems[i];
    }
    return NULL;
}

size_t sep_format_iso8601(char *buf, size_t cap, long long ms)
{
    if (ms < 0 || cap < 25)
        return 0;
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    if (gmtime_r(&secs, &tm) == NULL || tm.tm_year + 1900 > 9999)
        return 0;
    /* fixed width, written digit by digit: this runs for every status answer */
    const int parts[7] = {tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,      tm.tm_hour,
                          tm.tm_min,         tm.tm_sec,     (int)(ms % 1000)};
    static const char seps[7] = {'-', '-', 'T', ':', ':', '.', 'Z'};
    static const int widths[7] = {4, 2, 2, 2, 2, 2, 3};
    char *p = buf;
    for (int i = 0; i < 7; i++) {
        int v = parts[i];
        for (int d = widths[i] - 1; d >= 0; d--) {
            p[d] = (char)('0' + v % 10);
            v /= 10;
        }
        p += widths[i];
        *p++ = seps[i];
    }
    *p = '\0';
    return (size_t)(p - buf);
}

int sep_parse_iso8601(sep_str_t text, long long *ms)
{
    char tmp[40];
    if (text.len < 20 || text.len >= sizeof(tmp))
        return -1;
    memcpy(tmp, text.ptr, text.len);
    tmp[text.len] = '\0';
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    int consumed = 0;
    if (sscanf(tmp, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &consumed) != 6 ||
        consumed != 19)
        return -1;
    long long frac = 0;
    const char *p = tmp + 19;
    if (*p == '.') {
        int digits = 0;
        p++;
        while (*p >= '0' && *p <= '9') {
            if (digits < 3) {
                frac = frac * 10 + (*p - '0');
                digits++;
            }
            p++;
        }
        if (digits == 0)
            return -1;
        while (digits++ < 3)
            frac *= 10;
    }
    if (strcmp(p, "Z") != 0)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t secs = timegm(&tm);
    if (secs == (time_t)-1)
        return -1;
    *ms = (long long)secs * 1000 + frac;
    return 0;
}

size_t sep_job_json_bound(const sep_job_t *job)
{
    size_t strings = job->id.len + job->status.len + job->stage.len + job->message.len +
                     job->worker.len + job->model.len + job->stems_option.len + job->format.len +
                     job->priority.len + job->input_type.len + job->error_code.len +
                     job->error_message.len;
    size_t stems = 0;
    for (unsigned i = 0; i < job->n_stems; i++) {
        stems += sep_jw_string_bound(job->stems[i].name.len) +
                 sep_jw_string_bound(sizeof(SEP_API_JOBS_PATH) + job->id.len + 8 +
                                     job->stems[i].file.len) +
                 48;
    }
    return 1024 + 6 * strings + stems;
}

/* A double, from its original text when that is a plain JSON number. */
static void sep_jw_number(sep_json_writer_t *w, double v, sep_str_t text)
{
    if (text.len > 0 && !isnan(v))
        sep_jw_raw(w, text.ptr, text.len);
    else
        sep_jw_double(w, v);
}

static void sep_jw_opt_string(sep_json_writer_t *w, sep_str_t s)
{
    if (sep_str_is_set(s))
        sep_jw_string(w, s);
    else
        sep_jw_null(w);
}

static void sep_jw_opt_int(sep_json_writer_t *w, long long v)
{
    if (v >= 0)
        sep_jw_int(w, v);
    else
        sep_jw_null(w);
}

static void sep_jw_time(sep_json_writer_t *w, long long ms)
{
    char iso[32];
    size_t n = sep_format_iso8601(iso, sizeof(iso), ms);
    if (n == 0) {
        sep_jw_null(w);
        return;
    }
    sep_jw_raw(w, "\"", 1);
    sep_jw_raw(w, iso, n);
    sep_jw_raw(w, "\"", 1);
}

size_t sep_job_render_json(const sep_job_t *job, char *buf, size_t cap)
{
    sep_json_writer_t jw, *w = &jw;
    sep_jw_init(w, buf, cap);

    SEP_JW_LIT(w, "{");
    SEP_JW_KEY(w, "id");
    sep_jw_opt_string(w, job->id);
    SEP_JW_NEXT_KEY(w, "status");
    sep_jw_opt_string(w, job->status);
    SEP_JW_NEXT_KEY(w, "progress");
    if (isnan(job->progress))
        SEP_JW_LIT(w, "0");
    else
        sep_jw_number(w, job->progress, job->progress_text);
    SEP_JW_NEXT_KEY(w, "stage");
    sep_jw_opt_string(w, job->stage);
    SEP_JW_NEXT_KEY(w, "message");
    sep_jw_string(w, sep_str_is_set(job->message) ? job->message : SEP_STR(""));
    SEP_JW_NEXT_KEY(w, "attempts");
    sep_jw_int(w, job->attempts >= 0 ? job->attempts : 0);
    SEP_JW_NEXT_KEY(w, "max_attempts");
    sep_jw_opt_int(w, job->max_attempts);
    SEP_JW_NEXT_KEY(w, "created_at");
    sep_jw_time(w, job->created_at);
    SEP_JW_NEXT_KEY(w, "started_at");
    sep_jw_time(w, job->started_at);
    SEP_JW_NEXT_KEY(w, "finished_at");
    sep_jw_time(w, job->finished_at);

    SEP_JW_NEXT_KEY(w, "audio");
    if (!isnan(job->audio_seconds) || job->audio_sample_rate >= 0 || job->audio_channels >= 0) {
        SEP_JW_LIT(w, "{");
        SEP_JW_KEY(w, "seconds");
        sep_jw_number(w, job->audio_seconds, job->audio_seconds_text);
        SEP_JW_NEXT_KEY(w, "sample_rate");
        sep_jw_opt_int(w, job->audio_sample_rate);
        SEP_JW_NEXT_KEY(w, "channels");
        sep_jw_opt_int(w, job->audio_channels);
        SEP_JW_LIT(w, "}");
    } else {
        sep_jw_null(w);
    }

    SEP_JW_NEXT_KEY(w, "error");
    if (job->error_code.len > 0) {
        SEP_JW_LIT(w, "{");
        SEP_JW_KEY(w, "code");
        sep_jw_string(w, job->error_code);
        SEP_JW_NEXT_KEY(w, "message");
        sep_jw_string(w, sep_str_is_set(job->error_message) ? job->error_message : SEP_STR(""));
        SEP_JW_NEXT_KEY(w, "retryable");
        sep_jw_bool(w, job->error_retryable == 1);
        SEP_JW_LIT(w, "}");
    } else {
        sep_jw_null(w);
    }

    SEP_JW_NEXT_KEY(w, "stems");
    SEP_JW_LIT(w, "{");
    /* stem URLs embed the id unescaped: only a well-formed id gets them (a record whose
     * id is not one cannot be downloaded from anyway) */
    if (!job->files_deleted && sep_id_valid(job->id.ptr, job->id.len)) {
        for (unsigned i = 0; i < job->n_stems; i++) {
            const sep_job_stem_t *stem = &job->stems[i];
            if (i)
                SEP_JW_LIT(w, ",");
            sep_jw_string(w, stem->name);
            SEP_JW_LIT(w, ":{\"url\":\"" SEP_API_JOBS_PATH);
            sep_jw_raw(w, job->id.ptr, job->id.len); /* checked above: no escaping */
            SEP_JW_LIT(w, "/stems/");
            /* the public name is {stem}.{ext}: a file "{stem}.{attempt tag}.{ext}" keeps
             * its tag out of the URL (the module maps the URL back to the record's file) */
            const char *ext = stem->file.ptr + stem->file.len;
            while (ext > stem->file.ptr && ext[-1] != '.')
                ext--;
            if (ext > stem->file.ptr && stem->name.len + 1 < stem->file.len &&
                memcmp(stem->file.ptr, stem->name.ptr, stem->name.len) == 0 &&
                stem->file.ptr[stem->name.len] == '.') {
                sep_jw_raw(w, stem->name.ptr, stem->name.len);
                SEP_JW_LIT(w, ".");
                sep_jw_raw(w, ext, (size_t)(stem->file.ptr + stem->file.len - ext));
            } else {
                sep_jw_raw(w, stem->file.ptr, stem->file.len); /* checked by sep_stem_file_safe */
            }
            SEP_JW_LIT(w, "\",");
            SEP_JW_KEY(w, "bytes");
            sep_jw_opt_int(w, stem->bytes);
            SEP_JW_LIT(w, "}");
        }
    }
    SEP_JW_LIT(w, "}");

    SEP_JW_NEXT_KEY(w, "timing");
    SEP_JW_LIT(w, "{");
    SEP_JW_KEY(w, "queued_s");
    sep_jw_number(w, job->timing_queued_s, job->timing_queued_text);
    SEP_JW_NEXT_KEY(w, "decode_s");
    sep_jw_number(w, job->timing_decode_s, job->timing_decode_text);
    SEP_JW_NEXT_KEY(w, "separate_s");
    sep_jw_number(w, job->timing_separate_s, job->timing_separate_text);
    SEP_JW_NEXT_KEY(w, "encode_s");
    sep_jw_number(w, job->timing_encode_s, job->timing_encode_text);
    SEP_JW_LIT(w, "}");

    SEP_JW_NEXT_KEY(w, "worker");
    if (job->worker.len > 0)
        sep_jw_string(w, job->worker);
    else
        sep_jw_null(w);

    SEP_JW_NEXT_KEY(w, "options");
    SEP_JW_LIT(w, "{");
    SEP_JW_KEY(w, "model");
    sep_jw_opt_string(w, job->model);
    SEP_JW_NEXT_KEY(w, "stems");
    sep_jw_opt_string(w, job->stems_option);
    SEP_JW_NEXT_KEY(w, "format");
    sep_jw_opt_string(w, job->format);
    SEP_JW_NEXT_KEY(w, "priority");
    sep_jw_opt_string(w, job->priority);
    SEP_JW_NEXT_KEY(w, "shifts");
    sep_jw_opt_int(w, job->shifts);
    SEP_JW_NEXT_KEY(w, "overlap");
    sep_jw_number(w, job->overlap, job->overlap_text);
    SEP_JW_LIT(w, "}");

    SEP_JW_NEXT_KEY(w, "input");
    SEP_JW_LIT(w, "{");
    SEP_JW_KEY(w, "type");
    sep_jw_opt_string(w, job->input_type);
    SEP_JW_NEXT_KEY(w, "bytes");
    sep_jw_opt_int(w, job->input_bytes);
    SEP_JW_LIT(w, "}");

    SEP_JW_NEXT_KEY(w, "cancel_requested");
    sep_jw_bool(w, job->cancel_requested);
    SEP_JW_NEXT_KEY(w, "files_deleted");
    sep_jw_bool(w, job->files_deleted);
    SEP_JW_LIT(w, "}");

    return w->overflow ? 0 : sep_jw_length(w);
}

json_t *sep_job_to_json(const sep_job_t *job)
{
    size_t cap = sep_job_json_bound(job);
    char *buf = malloc(cap);
    if (buf == NULL)
        return NULL;
    size_t len = sep_job_render_json(job, buf, cap);
    /* a field may hold a NUL byte: the rendering has \u0000, which jansson must allow */
    json_t *obj = len ? json_loadb(buf, len, JSON_ALLOW_NUL, NULL) : NULL;
    free(buf);
    return obj;
}

static sep_str_t sep_json_str(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_string(v))
        return SEP_STR_NULL;
    return (sep_str_t){json_string_value(v), json_string_length(v)};
}

static double sep_json_num(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

static long long sep_json_int(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return json_is_integer(v) ? (long long)json_integer_value(v) : -1;
}

static long long sep_json_time(json_t *obj, const char *key)
{
    long long ms;
    if (sep_parse_iso8601(sep_json_str(obj, key), &ms) != 0)
        return -1;
    return ms;
}

/* The plain members of the public JSON shape, as sep_job_from_json() reads them back:
 * record[object][key] (object NULL: the record itself) -> member. */
enum sep_json_kind { SEP_JK_STR, SEP_JK_NUM, SEP_JK_INT, SEP_JK_TIME };

typedef struct sep_job_json_field {
    const char *object;
    const char *key;
    enum sep_json_kind kind;
    size_t offset;
} sep_job_json_field_t;

/* clang-format off */
#define SEP_JSON(object, key, kind, member) {object, key, kind, offsetof(sep_job_t, member)}
/* clang-format on */

static const sep_job_json_field_t sep_job_json_fields[] = {
    SEP_JSON(NULL, "progress", SEP_JK_NUM, progress),
    SEP_JSON(NULL, "stage", SEP_JK_STR, stage),
    SEP_JSON(NULL, "message", SEP_JK_STR, message),
    SEP_JSON(NULL, "attempts", SEP_JK_INT, attempts),
    SEP_JSON(NULL, "max_attempts", SEP_JK_INT, max_attempts),
    SEP_JSON(NULL, "created_at", SEP_JK_TIME, created_at),
    SEP_JSON(NULL, "started_at", SEP_JK_TIME, started_at),
    SEP_JSON(NULL, "finished_at", SEP_JK_TIME, finished_at),
    SEP_JSON(NULL, "worker", SEP_JK_STR, worker),
    SEP_JSON("audio", "seconds", SEP_JK_NUM, audio_seconds),
    SEP_JSON("audio", "sample_rate", SEP_JK_INT, audio_sample_rate),
    SEP_JSON("audio", "channels", SEP_JK_INT, audio_channels),
    SEP_JSON("error", "code", SEP_JK_STR, error_code),
    SEP_JSON("error", "message", SEP_JK_STR, error_message),
    SEP_JSON("timing", "queued_s", SEP_JK_NUM, timing_queued_s),
    SEP_JSON("timing", "decode_s", SEP_JK_NUM, timing_decode_s),
    SEP_JSON("timing", "separate_s", SEP_JK_NUM, timing_separate_s),
    SEP_JSON("timing", "encode_s", SEP_JK_NUM, timing_encode_s),
    SEP_JSON("options", "model", SEP_JK_STR, model),
    SEP_JSON("options", "stems", SEP_JK_STR, stems_option),
    SEP_JSON("options", "format", SEP_JK_STR, format),
    SEP_JSON("options", "priority", SEP_JK_STR, priority),
    SEP_JSON("options", "shifts", SEP_JK_INT, shifts),
    SEP_JSON("options", "overlap", SEP_JK_NUM, overlap),
    SEP_JSON("input", "type", SEP_JK_STR, input_type),
    SEP_JSON("input", "bytes", SEP_JK_INT, input_bytes),
};

#define SEP_N_JSON_FIELDS (sizeof(sep_job_json_fields) / sizeof(sep_job_json_fields[0]))

static void sep_job_read_json_fields(sep_job_t *job, json_t *record)
{
    for (size_t i = 0; i < SEP_N_JSON_FIELDS; i++) {
        const sep_job_json_field_t *f = &sep_job_json_fields[i];
        json_t *obj = f->object ? json_object_get(record, f->object) : record;
        if (!json_is_object(obj))
            continue;
        char *member = (char *)job + f->offset;
        switch (f->kind) {
        case SEP_JK_STR:
            *(sep_str_t *)member = sep_json_str(obj, f->key);
            break;
        case SEP_JK_NUM:
            *(double *)member = sep_json_num(obj, f->key);
            break;
        case SEP_JK_INT:
            *(long long *)member = sep_json_int(obj, f->key);
            break;
        case SEP_JK_TIME:
            *(long long *)member = sep_json_time(obj, f->key);
            break;
        }
    }
}

int sep_job_from_json(sep_job_t *job, json_t *record, char *err, size_t err_cap)
{
    sep_job_init(job);
    if (!json_is_object(record)) {
        snprintf(err, err_cap, "a job record is a JSON object");
        return -1;
    }
    job->id = sep_json_str(record, "id");
    job->status = sep_json_str(record, "status");
    if (!sep_str_is_set(job->id) || !sep_str_is_set(job->status)) {
        snprintf(err, err_cap, "a job record needs string fields id and status");
        return -1;
    }
    sep_job_read_json_fields(job, record);
    json_t *error = json_object_get(record, "error");
    if (json_is_object(error)) {
        json_t *retryable = json_object_get(error, "retryable");
        job->error_retryable = json_is_boolean(retryable) ? json_is_true(retryable) : -1;
    }
    job->cancel_requested = json_is_true(json_object_get(record, "cancel_requested"));
    job->files_deleted = json_is_true(json_object_get(record, "files_deleted"));

    json_t *stems = json_object_get(record, "stems");
    if (json_is_object(stems)) {
        const char *name;
        json_t *entry;
        json_object_foreach(stems, name, entry)
        {
            if (job->n_stems == SEP_MAX_STEMS)
                break;
            sep_str_t url = sep_json_str(entry, "url");
            if (url.len == 0)
                continue;
            const char *file = url.ptr + url.len;
            while (file > url.ptr && file[-1] != '/')
                file--;
            size_t file_len = url.len - (size_t)(file - url.ptr);
            if (!sep_stem_file_safe(file, file_len))
                continue;
            sep_job_stem_t *stem = &job->stems[job->n_stems++];
            stem->name = sep_str_from_cstr(name);
            stem->file = (sep_str_t){file, file_len};
            stem->bytes = sep_json_int(entry, "bytes");
        }
    }
    return 0;
}

int sep_event_parse(sep_event_t *ev, const char *msg, size_t len)
{
    memset(ev, 0, sizeof(*ev));
    sep_job_init(&ev->job);
    ev->doc = json_loadb(msg, len, 0, NULL);
    if (!json_is_object(ev->doc))
        goto fail;
    ev->event = sep_json_str(ev->doc, "event");
    json_t *fields = json_object_get(ev->doc, "job");
    if (!sep_str_is_set(ev->event) || !json_is_object(fields))
        goto fail;
    const char *key;
    json_t *value;
    json_object_foreach(fields, key, value)
    {
        if (json_is_string(value))
            sep_job_set_field(&ev->job, sep_str_from_cstr(key),
                              (sep_str_t){json_string_value(value), json_string_length(value)});
    }
    return 0;
fail:
    sep_event_clear(ev);
    return -1;
}

void sep_event_clear(sep_event_t *ev)
{
    sep_job_clear(&ev->job);
    if (ev->doc)
        json_decref(ev->doc);
    ev->doc = NULL;
}
