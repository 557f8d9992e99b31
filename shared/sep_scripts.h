/*
 * The Lua scripts of the service (shared/lua/NAME.lua), compiled in as C strings.
 *
 * The build turns each shared/lua/NAME.lua, preceded by the shared helpers of
 * shared/lua/lib.lua, into an entry of sep_scripts[] (source text and its SHA1,
 * the name Redis caches it under), in the order of the enum
 * below; gen-scripts.sh is the generator. Call a script with
 * EVALSHA sha numkeys KEYS... ARGV...; on a NOSCRIPT error, SCRIPT LOAD the source
 * (or EVAL it) and retry. Each .lua file's header documents its KEYS, ARGV and reply;
 * shared/README.md states the whole contract (the job KEYS, tokens, reasons, errors).
 */
#ifndef SEP_SCRIPTS_H
#define SEP_SCRIPTS_H

#include <stddef.h>

typedef enum sep_script_id {
    SEP_SCRIPT_SUBMIT = 0,   /* module: create + queue a job */
    SEP_SCRIPT_CANCEL,       /* module: DELETE /v1/jobs/{id} */
    SEP_SCRIPT_GET,          /* read several job records */
    SEP_SCRIPT_CLAIM,        /* workerd: mark a job running */
    SEP_SCRIPT_PROGRESS,     /* workerd: progress + event */
    SEP_SCRIPT_COMPLETE,     /* workerd (and tests): finish with stems */
    SEP_SCRIPT_FAIL,         /* workerd: retry later, fail, or cancel */
    SEP_SCRIPT_PROMOTE,      /* workerd: due retries back into their stream */
    SEP_SCRIPT_HEARTBEAT,    /* workerd: worker liveness */
    SEP_SCRIPT_TOUCH,        /* workerd: renew the claim of a running job */
    SEP_SCRIPT_REQUEUE,      /* workerd: give a running job back at once (drain) */
    SEP_SCRIPT_FORCE_CANCEL, /* janitor: cancel a running job whose worker is gone */
    SEP_SCRIPT_SETUP,        /* workerd: create the queues and their group */
    SEP_SCRIPT_JANITOR,      /* workerd: expired records, overdue jobs, idle consumers */
    SEP_SCRIPT_STATS,        /* module, workerd inspect: queues, counters, workers */
    SEP_SCRIPT_COUNT
} sep_script_id_t;

/* The generator emits the scripts in this order; tests check names against it. */
#define SEP_SCRIPT_NAMES                                                                           \
    "submit", "cancel", "get", "claim", "progress", "complete", "fail", "promote", "heartbeat",    \
        "touch", "requeue", "force_cancel", "setup", "janitor", "stats"

typedef struct sep_script {
    const char *name;   /* file name without .lua */
    const char *source; /* the script text */
    size_t length;      /* strlen(source) */
    const char *sha1;   /* 40 lowercase hex digits of SHA1(source) */
} sep_script_t;

extern const sep_script_t sep_scripts[SEP_SCRIPT_COUNT];

#endif
