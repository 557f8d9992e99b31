/*
 * config.c - `workerd run` settings: one table of settings drives the defaults, the
 * INI file (inih), the long flags, --help and the printed config (see config.h).
 *
 * inih reads the file line by line through our own reader (ini_parse_stream), which
 * counts lines, so an error in the handler is reported with its exact line.
 */
#include "workerd/config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef enum { T_STR, T_INT, T_DUR } setting_type;

typedef struct {
    const char *name; /* file key; the flag is --name with '-' for '_' */
    setting_type type;
    size_t offset;
    size_t size;     /* T_STR: buffer size */
    double lo, hi;   /* T_INT / T_DUR bounds */
    const char *def; /* default, as text */
    int restart;     /* 1: only a restart applies a change */
    const char *help;
} setting;

#define STR(f, def, restart, help)                                                                 \
    {                                                                                              \
#f, T_STR, offsetof(sep_workerd_config, f), sizeof(((sep_workerd_config *)0)->f), 0, 0,    \
            def, restart, help                                                                     \
    }
#define INT(f, lo, hi, def, restart, help)                                                         \
    {                                                                                              \
#f, T_INT, offsetof(sep_workerd_config, f), sizeof(int), lo, hi, def, restart, help        \
    }
#define DUR(f, lo, hi, def, restart, help)                                                         \
    {                                                                                              \
#f, T_DUR, offsetof(sep_workerd_config, f), sizeof(double), lo, hi, def, restart, help     \
    }

static const setting settings[] = {
    STR(redis, "127.0.0.1:6379", 1,
        "Redis: host:port or unix:/path, optionally followed by db=N, user=NAME (an ACL user) "
        "and password=SECRET"),
    STR(prefix, "{sep}:", 1, "prefix of every Redis key; the same as nginx's sep_key_prefix"),
    STR(name, "", 1, "this supervisor's consumer and worker name in Redis, unique per host"),
    STR(spool, "/var/lib/sep/spool", 1,
        "the spool shared with nginx: {spool}/{id}/input.*, the stems beside it"),
    STR(models_dir, "models/weights", 1, "folder of the NAME.safetensors weights files"),
    STR(device, "auto", 1, "auto (GPUs when the CUDA driver finds any, else CPU), cpu or cuda"),
    INT(cpu_workers, 1, 256, "1", 1, "CPU worker processes when running on the CPU"),
    INT(gpus, 1, 64, "1", 1, "GPU worker processes with device cuda (one per GPU)"),
    INT(threads, 0, 4096, "0", 1, "engine threads per CPU worker (0 = cores / cpu_workers)"),
    INT(max_batch, 1, 1024, "4", 1, "segments per device batch (segments of several jobs mix)"),
    INT(concurrency, 1, 1024, "2", 0, "jobs in flight at once (decode/encode overlap compute)"),
    INT(max_jobs_per_worker, 0, INT_MAX, "0", 0,
        "recycle a device worker after this many jobs (0 = never)"),
    DUR(visibility_timeout, 1, 86400 * 7, "60s", 0,
        "lease of a claim: only jobs of supervisors silent this long are taken over"),
    DUR(heartbeat_interval, 0.1, 3600, "5s", 0,
        "heartbeat and lease refresh period (below visibility_timeout / 2)"),
    DUR(retry_backoff_base, 0, 86400, "2s", 0,
        "delay before the first retry, doubled per attempt, plus jitter"),
    DUR(retry_backoff_max, 0, 86400 * 7, "5m", 0, "longest delay between retries"),
    DUR(soft_time_limit, 0, 86400 * 7, "1h", 0,
        "a job running longer fails with time_limit, not retried (0 = none)"),
    DUR(hard_time_limit, 0, 86400 * 7, "65m", 0,
        "past it the job's device worker is killed and restarted, the job retried (0 = none)"),
    DUR(drain_timeout, 0, 86400, "30s", 0,
        "on SIGTERM, how long running jobs may finish before they are handed back"),
    DUR(janitor_interval, 1, 86400, "60s", 0,
        "period of the sweep removing spool directories of expired/deleted jobs"),
    DUR(orphan_age, 60, 86400 * 30, "1h", 0,
        "a spool directory with no job record this old is removed (an upload never queued)"),
    INT(dead_max, 1, INT_MAX, "10000", 0, "entries kept in the {prefix}dead stream"),
    INT(verbose, 0, 9, "0", 0, "log level: 0 = one line per job event, 1+ = debug (-v, -vv)"),
};
#define N_SETTINGS (sizeof(settings) / sizeof(settings[0]))

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* key with '-' or '_' -> the setting, or NULL */
static const setting *find_setting(const char *key)
{
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const char *a = settings[i].name, *b = key;
        while (*a && *b && (*a == *b || (*a == '_' && *b == '-')))
            a++, b++;
        if (!*a && !*b)
            return &settings[i];
    }
    return NULL;
}

/* "1h30m", "500ms", "30" (seconds), "1.5s" -> seconds. 0 or -1. */
static int parse_duration(const char *s, double *out)
{
    double total = 0;
    const char *p = s;
    int parts = 0;
    while (isspace((unsigned char)*p))
        p++;
    while (*p) {
        char *end;
        errno = 0;
        if (!isdigit((unsigned char)*p) && *p != '.')
            return -1;
        double v = strtod(p, &end);
        if (errno || end == p || !isfinite(v) || v < 0)
            return -1;
        p = end;
        double unit = 1;
        if (strncmp(p, "ms", 2) == 0) {
            unit = 0.001;
            p += 2;
        } else if (*p == 's') {
            p++;
        } else if (*p == 'm') {
            unit = 60;
            p++;
        } else if (*p == 'h') {
            unit = 3600;
            p++;
        } else if (*p == 'd') {
            unit = 86400;
            p++;
        } else if (*p && !isspace((unsigned char)*p)) {
            return -1;
        }
        total += v * unit;
        parts++;
        while (isspace((unsigned char)*p))
            p++;
    }
    if (!parts)
        return -1;
    *out = total;
    return 0;
}

static void format_duration(double s, char *buf, size_t cap)
{
    if (s == 0)
        snprintf(buf, cap, "0");
    else if (s < 1)
        snprintf(buf, cap, "%gms", s * 1000);
    else
        snprintf(buf, cap, "%gs", s);
}

static int prefix_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] <= ' ' || s[i] > '~')
            return 0;
    return 1;
}

static int set_value(sep_workerd_config *c, const setting *st, const char *value, char *err,
                     size_t errlen)
{
    char *field = (char *)c + st->offset;
    switch (st->type) {
    case T_STR: {
        size_t n = strlen(value);
        if (n >= st->size) {
            set_err(err, errlen, "value too long (%zu bytes, at most %zu)", n, st->size - 1);
            return -1;
        }
        if (strcmp(st->name, "prefix") == 0 && !prefix_valid(value)) {
            set_err(err, errlen, "'%s' is not a key prefix (1 to 64 visible ASCII characters)",
                    value);
            return -1;
        }
        if (strcmp(st->name, "device") == 0 && strcmp(value, "auto") && strcmp(value, "cpu") &&
            strcmp(value, "cuda")) {
            set_err(err, errlen, "'%s' is not a device: auto, cpu or cuda", value);
            return -1;
        }
        if (n == 0 && strcmp(st->name, "name") != 0) {
            set_err(err, errlen, "must not be empty");
            return -1;
        }
        memcpy(field, value, n + 1);
        return 0;
    }
    case T_INT: {
        char *end;
        errno = 0;
        long long v = strtoll(value, &end, 10);
        while (*end && isspace((unsigned char)*end))
            end++;
        if (errno || end == value || *end || v < (long long)st->lo || v > (long long)st->hi) {
            set_err(err, errlen, "'%s' is not an integer in [%.0f, %.0f]", value, st->lo, st->hi);
            return -1;
        }
        *(int *)field = (int)v;
        return 0;
    }
    case T_DUR: {
        double v;
        if (parse_duration(value, &v) || v < st->lo || v > st->hi) {
            char lo[32], hi[32];
            format_duration(st->lo, lo, sizeof(lo));
            format_duration(st->hi, hi, sizeof(hi));
            set_err(err, errlen,
                    "'%s' is not a duration in [%s, %s] (e.g. 500ms, 30s, 5m, 2h, 1h30m)", value,
                    lo, hi);
            return -1;
        }
        *(double *)field = v;
        return 0;
    }
    }
    return -1;
}

int sep_workerd_config_set(sep_workerd_config *c, const char *key, const char *value, char *err,
                           size_t errlen)
{
    const setting *st = find_setting(key);
    if (!st) {
        set_err(err, errlen, "unknown setting '%s' (workerd run --help lists them)", key);
        return -1;
    }
    char msg[512];
    if (set_value(c, st, value, msg, sizeof(msg))) {
        set_err(err, errlen, "%s: %s", st->name, msg);
        return -1;
    }
    return 0;
}

void sep_workerd_config_defaults(sep_workerd_config *c)
{
    memset(c, 0, sizeof(*c));
    for (size_t i = 0; i < N_SETTINGS; i++)
        set_value(c, &settings[i], settings[i].def, NULL, 0);
    if (gethostname(c->name, sizeof(c->name) - 1) != 0 || !c->name[0])
        snprintf(c->name, sizeof(c->name), "workerd");
}

/* ---- the INI file ----------------------------------------------------------------- */

typedef struct {
    FILE *f;
    int line;
    sep_workerd_config *c;
    const char *path;
    int failed;
    int fail_line;
    int section_line; /* line of the last [section] header */
    int too_long;     /* line number of the first line longer than inih's buffer */
    char *err;
    size_t errlen;
} cfg_reader;

static char *read_line(char *str, int num, void *stream)
{
    cfg_reader *r = stream;
    char *s = fgets(str, num, r->f);
    if (!s)
        return NULL;
    r->line++;
    const char *p = s;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '[')
        r->section_line = r->line;
    if (!strchr(s, '\n') && !feof(r->f)) {
        /* longer than inih's line buffer: drop the rest, report it */
        if (!r->too_long)
            r->too_long = r->line;
        int ch;
        while ((ch = fgetc(r->f)) != EOF && ch != '\n')
            ;
    }
    return s;
}

static int on_entry(void *user, const char *section, const char *name, const char *value)
{
    cfg_reader *r = user;
    if (r->failed)
        return 1; /* only the first error is reported */
    if (section[0] && strcmp(section, "workerd") != 0) {
        set_err(r->err, r->errlen, "%s:%d: unknown section [%s] (settings go under [workerd])",
                r->path, r->section_line, section);
        r->failed = 1;
        r->fail_line = r->section_line;
        return 0;
    }
    char msg[600];
    if (sep_workerd_config_set(r->c, name, value ? value : "", msg, sizeof(msg))) {
        set_err(r->err, r->errlen, "%s:%d: %s", r->path, r->line, msg);
        r->failed = 1;
        r->fail_line = r->line;
        return 0;
    }
    return 1;
}

int sep_workerd_config_read_file(sep_workerd_config *c, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        set_err(err, errlen, "cannot read config file '%s': %s", path, strerror(errno));
        return -1;
    }
    cfg_reader r = {.f = f, .c = c, .path = path, .err = err, .errlen = errlen};
    int rc = ini_parse_stream(read_line, &r, on_entry, &r);
    fclose(f);
    if (rc < 0) {
        set_err(err, errlen, "cannot parse config file '%s': out of memory", path);
        return -1;
    }
    /* the first of: a line too long, a syntax error (rc), a refused setting */
    int fail = r.failed ? r.fail_line : INT_MAX;
    if (r.too_long && r.too_long <= fail && (rc <= 0 || r.too_long <= rc)) {
        set_err(err, errlen, "%s:%d: line too long (at most %d characters)", path, r.too_long,
                INI_MAX_LINE - 2);
        return -1;
    }
    if (rc > 0 && rc < fail) {
        set_err(err, errlen, "%s:%d: syntax error (expected `key = value` or `[workerd]`)", path,
                rc);
        return -1;
    }
    if (r.failed)
        return -1;
    snprintf(c->config_path, sizeof(c->config_path), "%s", path);
    return 0;
}

/* ---- checks between settings ------------------------------------------------------ */

int sep_workerd_config_check(const sep_workerd_config *c, char *err, size_t errlen)
{
    if (c->heartbeat_interval * 2 > c->visibility_timeout) {
        set_err(err, errlen,
                "heartbeat_interval (%gs) must be at most half of visibility_timeout (%gs), or "
                "a live supervisor's jobs could be taken over",
                c->heartbeat_interval, c->visibility_timeout);
        return -1;
    }
    if (c->soft_time_limit > 0 && c->hard_time_limit > 0 &&
        c->soft_time_limit > c->hard_time_limit) {
        set_err(err, errlen, "soft_time_limit (%gs) must not exceed hard_time_limit (%gs)",
                c->soft_time_limit, c->hard_time_limit);
        return -1;
    }
    if (c->retry_backoff_base > c->retry_backoff_max) {
        set_err(err, errlen, "retry_backoff_base (%gs) must not exceed retry_backoff_max (%gs)",
                c->retry_backoff_base, c->retry_backoff_max);
        return -1;
    }
    return 0;
}

/* ---- flags ------------------------------------------------------------------------ */

int sep_workerd_config_load(sep_workerd_config *c, int argc, char **argv, char *err, size_t errlen)
{
    const char *file = NULL;
    /* first pass: -c/--config and --help; everything else is checked in the second */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0)
            return 1;
        if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
            if (i + 1 >= argc) {
                set_err(err, errlen, "%s needs a file name", a);
                return -1;
            }
            file = argv[++i];
        } else if (strncmp(a, "--config=", 9) == 0) {
            file = a + 9;
        }
    }
    sep_workerd_config n;
    sep_workerd_config_defaults(&n);
    if (file && sep_workerd_config_read_file(&n, file, err, errlen))
        return -1;
    int verbose_flags = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
            i++;
            continue;
        }
        if (strncmp(a, "--config=", 9) == 0)
            continue;
        if (a[0] == '-' && a[1] == 'v' && strspn(a + 1, "v") == strlen(a + 1)) {
            verbose_flags += (int)strlen(a + 1);
            continue;
        }
        if (strcmp(a, "--verbose") == 0) {
            verbose_flags++;
            continue;
        }
        if (strncmp(a, "--", 2) != 0 || !a[2]) {
            set_err(err, errlen, "unexpected argument '%s' (workerd run --help)", a);
            return -1;
        }
        char key[128];
        const char *eq = strchr(a + 2, '='), *value;
        size_t klen = eq ? (size_t)(eq - (a + 2)) : strlen(a + 2);
        if (klen >= sizeof(key)) {
            set_err(err, errlen, "unknown option '%s'", a);
            return -1;
        }
        memcpy(key, a + 2, klen);
        key[klen] = '\0';
        const setting *st = find_setting(key);
        if (!st || strchr(key, '_')) {
            set_err(err, errlen, "unknown option '--%s' (workerd run --help lists them)", key);
            return -1;
        }
        if (eq) {
            value = eq + 1;
        } else {
            if (i + 1 >= argc) {
                set_err(err, errlen, "--%s needs a value", key);
                return -1;
            }
            value = argv[++i];
        }
        char msg[512];
        if (set_value(&n, st, value, msg, sizeof(msg))) {
            set_err(err, errlen, "--%s: %s", key, msg);
            return -1;
        }
    }
    if (verbose_flags)
        n.verbose = verbose_flags > 9 ? 9 : verbose_flags;
    if (!n.name[0] && (gethostname(n.name, sizeof(n.name) - 1) != 0 || !n.name[0]))
        snprintf(n.name, sizeof(n.name), "workerd");
    char msg[512];
    if (sep_workerd_config_check(&n, msg, sizeof(msg))) {
        if (file)
            set_err(err, errlen, "%s (after reading %s and the flags)", msg, file);
        else
            set_err(err, errlen, "%s", msg);
        return -1;
    }
    *c = n;
    return 0;
}

/* ---- help, print, reload ---------------------------------------------------------- */

void sep_workerd_config_help(FILE *f)
{
    fprintf(f, "usage: workerd run [-c FILE] [--SETTING VALUE]... [-v]\n"
               "\n"
               "Runs the supervisor: claims queued jobs from Redis, separates them on the\n"
               "device workers and writes the stems into the spool. Settings come from the INI\n"
               "file given with -c (key = value, optionally under [workerd]), then from the\n"
               "flags, which win. Durations take a unit: 500ms, 30s (default), 5m, 2h, 1h30m.\n"
               "SIGHUP reloads the file (changes marked restart need one); SIGTERM drains.\n"
               "\n"
               "  -c, --config FILE              the INI file (sample: conf/workerd.conf)\n"
               "  -h, --help                     this text\n"
               "\n"
               "settings (the file's key is the flag's name with _ for -):\n");
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const setting *st = &settings[i];
        char flag[80];
        if (strcmp(st->name, "verbose") == 0)
            snprintf(flag, sizeof(flag), "-v, --verbose");
        else
            snprintf(flag, sizeof(flag), "--%s %s", st->name,
                     st->type == T_INT   ? "N"
                     : st->type == T_DUR ? "TIME"
                                         : "VALUE");
        for (char *p = flag; *p; p++)
            if (*p == '_')
                *p = '-';
        const char *def = st->def;
        if (strcmp(st->name, "name") == 0)
            def = "the host name";
        fprintf(f, "  %-30s default: %s%s\n", flag, def, st->restart ? "  (restart)" : "");
        fprintf(f, "  %-30s %s%s\n", "", st->help,
                strcmp(st->name, "verbose") == 0 ? "; in the file: verbose = N" : "");
    }
}

void sep_workerd_config_print(const sep_workerd_config *c, FILE *f)
{
    fprintf(f, "[workerd]\n");
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const setting *st = &settings[i];
        const char *field = (const char *)c + st->offset;
        switch (st->type) {
        case T_STR:
            fprintf(f, "%s = %s\n", st->name, field);
            break;
        case T_INT:
            fprintf(f, "%s = %d\n", st->name, *(const int *)field);
            break;
        case T_DUR: {
            char buf[32];
            format_duration(*(const double *)field, buf, sizeof(buf));
            fprintf(f, "%s = %s\n", st->name, buf);
            break;
        }
        }
    }
}

int sep_workerd_config_restart_needed(const sep_workerd_config *old, const sep_workerd_config *new,
                                      char *buf, size_t cap)
{
    int n = 0;
    size_t used = 0;
    if (buf && cap)
        buf[0] = '\0';
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const setting *st = &settings[i];
        if (!st->restart)
            continue;
        if (memcmp((const char *)old + st->offset, (const char *)new + st->offset, st->size) == 0)
            continue;
        if (st->type == T_STR &&
            strcmp((const char *)old + st->offset, (const char *)new + st->offset) == 0)
            continue;
        if (buf && cap > used) {
            int w = snprintf(buf + used, cap - used, "%s%s", n ? ", " : "", st->name);
            used += w > 0 ? (size_t)w : 0;
            if (used >= cap)
                used = cap - 1;
        }
        n++;
    }
    return n;
}
