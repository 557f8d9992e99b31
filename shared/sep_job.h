/*
 * The job record: the fields of the {p}job:{id} hash, the C struct that reads them,
 * and its JSON form (the body of GET /v1/jobs/{id}).
 *
 * Hash fields (all values are Redis strings; times are integer milliseconds since
 * the Unix epoch; flags are "1" when set):
 *
 *   written by submit (module):
 *     id               the job id (UUIDv4 text)
 *     status           queued | running | completed | failed | canceled
 *     progress         0..1
 *     stage            short word: queued, retry_wait, starting, decode, separate,
 *                      encode, done, failed, canceled (workerd may add its own)
 *     message          human text about the current stage ("" when none)
 *     attempts         attempts started so far (claim adds one)
 *     max_attempts     retry limit for retryable failures
 *     result_ttl       seconds the record lives after a terminal state
 *     created_at       submission time
 *     model, stems_option, format, priority, shifts, overlap
 *                      the validated request options (stems_option: "all" or
 *                      the two-stem source)
 *     input            spool file name of the upload ("input.wav", ...)
 *     input_type       sniffed type (sep_audio_type_name: wav, rf64, flac, ...)
 *     input_bytes      upload size
 *     stream_id        id of the job's entry in {p}q:{priority} while it is queued
 *                      in its stream or running (none while waiting for a retry)
 *   written by workerd (claim, touch, progress, complete, fail, requeue scripts):
 *     started_at, finished_at
 *     worker           name of the worker running / that ran the job
 *     token            the live attempt token "<attempt>:<hex>" while running
 *                      (shared/README.md: fencing); not rendered
 *     audio_seconds, audio_sample_rate, audio_channels
 *     error_code, error_message, error_retryable ("1" / "0")
 *     stems            JSON object: {"vocals": {"file": "vocals.wav", "bytes": 123},
 *                      ...}, file names relative to {spool}/{id}/
 *     timing_queued_s, timing_decode_s, timing_separate_s, timing_encode_s
 *   written by every script that publishes an event (publish_job in lib.lua):
 *     seq              events published so far; the event's own number (not
 *                      rendered: the SSE id of GET /v1/jobs/{id}/events)
 *   flags:
 *     cancel_requested a running job was asked to stop (DELETE)
 *     files_deleted    the job's spool files were deleted early (DELETE)
 *
 * Events on {p}ev:{id} are JSON {"event": E, "job": {hash fields as strings}} with E
 * one of progress, completed, failed, canceled; sep_event_parse() reads them back
 * into a sep_job_t, so the public shape is rendered by this one file only.
 *
 * A sep_job_t holds views (sep_str_t) into the memory it was read from (a hiredis
 * reply, a jansson document): render it while that memory is alive, then call
 * sep_job_clear() (which frees the parsed stems document, the only thing owned).
 */
#ifndef SEP_JOB_H
#define SEP_JOB_H

#include <jansson.h>
#include <stddef.h>

#include "shared/sep_options.h"
#include "shared/sep_str.h"

/* Where stem URLs point: SEP_API_JOBS_PATH {id} "/stems/" {file}. */
#define SEP_API_JOBS_PATH "/v1/jobs/"

typedef enum sep_job_status {
    SEP_STATUS_UNKNOWN = 0,
    SEP_STATUS_QUEUED,
    SEP_STATUS_RUNNING,
    SEP_STATUS_COMPLETED,
    SEP_STATUS_FAILED,
    SEP_STATUS_CANCELED,
} sep_job_status_t;

typedef struct sep_job_stem {
    sep_str_t name; /* output stem name: "vocals", "no_vocals", ... */
    sep_str_t file; /* file name in the job's spool directory */
    long long bytes;
} sep_job_stem_t;

typedef struct sep_job {
    sep_str_t id, status, stage, message, worker;
    sep_str_t model, stems_option, format, priority;
    sep_str_t input, input_type, stream_id;
    sep_str_t error_code, error_message;
    sep_str_t stems_json;

    /* numbers: NaN (doubles) or -1 (integers) when absent */
    double progress;
    long long attempts, max_attempts, result_ttl;
    long long created_at, started_at, finished_at; /* ms since the epoch */
    long long shifts;
    double overlap;
    long long input_bytes;
    double audio_seconds;
    long long audio_sample_rate, audio_channels;
    int error_retryable; /* -1 absent, 0, 1 */
    double timing_queued_s, timing_decode_s, timing_separate_s, timing_encode_s;
    int cancel_requested, files_deleted;

    /* the text the doubles above were read from, when it is a plain JSON number: the
     * renderer copies it instead of formatting the double again */
    sep_str_t progress_text, overlap_text, audio_seconds_text;
    sep_str_t timing_queued_text, timing_decode_text, timing_separate_text, timing_encode_text;

    /* stems, parsed from stems_json (views into stems_doc) */
    unsigned n_stems;
    sep_job_stem_t stems[SEP_MAX_STEMS];
    json_t *stems_doc;
} sep_job_t;

void sep_job_init(sep_job_t *job);
void sep_job_clear(sep_job_t *job);

/* Sets one hash field. Returns 0 when the field is known, 1 when it is not (it is
 * ignored). Unparsable numbers are treated as absent. */
int sep_job_set_field(sep_job_t *job, sep_str_t name, sep_str_t value);

/* Reads an HGETALL reply given as n items (field, value, field, value, ...).
 * Returns 0, or -1 when n is odd. */
int sep_job_from_fields(sep_job_t *job, size_t n, const char *const *items, const size_t *lens);

/* 1 when the record exists (has an id and a status). */
int sep_job_exists(const sep_job_t *job);

sep_job_status_t sep_job_status(const sep_job_t *job);
const char *sep_job_status_name(sep_job_status_t status);

/* Looks up a stem by name; NULL when the job lists no such stem. */
const sep_job_stem_t *sep_job_find_stem(const sep_job_t *job, sep_str_t name);

/* A buffer of this size always holds the rendered record. */
size_t sep_job_json_bound(const sep_job_t *job);

/* Renders the public JSON record (no trailing newline). Returns its length, or 0
 * when cap is too small. */
size_t sep_job_render_json(const sep_job_t *job, char *buf, size_t cap);

/* The public JSON record as a jansson object (new reference), or NULL. */
json_t *sep_job_to_json(const sep_job_t *job);

/* Reads a public JSON record back. The job's views point into record, which must
 * outlive the job. Returns 0, or -1 with a reason in err. */
int sep_job_from_json(sep_job_t *job, json_t *record, char *err, size_t err_cap);

/* Formats ms since the epoch as ISO-8601 UTC with milliseconds
 * ("2025-01-30T10:00:00.123Z", 24 characters) into buf (at least 25 bytes).
 * Returns the length, or 0 for a negative time. */
size_t sep_format_iso8601(char *buf, size_t cap, long long ms);

/* Parses that form back (the fraction is optional). Returns 0 or -1. */
int sep_parse_iso8601(sep_str_t text, long long *ms);

/* An event from {p}ev:{id}. */
typedef struct sep_event {
    sep_str_t event; /* progress, completed, failed, canceled */
    sep_job_t job;
    json_t *doc;
} sep_event_t;

/* Parses an event message. Returns 0 (then call sep_event_clear) or -1. */
int sep_event_parse(sep_event_t *ev, const char *msg, size_t len);
void sep_event_clear(sep_event_t *ev);

#endif
