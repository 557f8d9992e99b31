/*
 * Key builders for the Redis schema described in sep_keys.h. Each key is
 * prefix + kind + optional suffix, written with memcpy into the caller's buffer.
 */
#include "shared/sep_keys.h"

#include <string.h>

static size_t sep_key_join(char *buf, size_t cap, sep_str_t prefix, const char *kind,
                           sep_str_t suffix)
{
    size_t kind_len = strlen(kind);
    size_t total = prefix.len + kind_len + suffix.len;
    if (total == 0 || total >= cap)
        return 0;
    memcpy(buf, prefix.ptr, prefix.len);
    memcpy(buf + prefix.len, kind, kind_len);
    if (suffix.len)
        memcpy(buf + prefix.len + kind_len, suffix.ptr, suffix.len);
    buf[total] = '\0';
    return total;
}

/* A key whose last part names one thing (a job id, a worker name, ...):
 * 1..SEP_KEY_PART_MAX bytes, else no key (0). */
static size_t sep_key_with_part(char *buf, size_t cap, sep_str_t prefix, const char *kind,
                                sep_str_t part)
{
    if (part.len == 0 || part.len > SEP_KEY_PART_MAX)
        return 0;
    return sep_key_join(buf, cap, prefix, kind, part);
}

/* 1 when s is 1..max_len bytes of visible ASCII (0x21..0x7e: no spaces, no controls). */
static int sep_visible_ascii(sep_str_t s, size_t max_len)
{
    if (s.ptr == NULL || s.len == 0 || s.len > max_len)
        return 0;
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        if (c < 0x21 || c > 0x7e)
            return 0;
    }
    return 1;
}

int sep_prefix_valid(sep_str_t prefix)
{
    return sep_visible_ascii(prefix, SEP_PREFIX_MAX);
}

size_t sep_key_job(char *buf, size_t cap, sep_str_t prefix, sep_str_t id)
{
    return sep_key_with_part(buf, cap, prefix, "job:", id);
}

size_t sep_key_queue(char *buf, size_t cap, sep_str_t prefix, sep_priority_t priority)
{
    return sep_key_join(buf, cap, prefix, priority == SEP_PRIORITY_HIGH ? "q:high" : "q:normal",
                        SEP_STR_NULL);
}

size_t sep_key_delayed(char *buf, size_t cap, sep_str_t prefix)
{
    return sep_key_join(buf, cap, prefix, "delayed", SEP_STR_NULL);
}

size_t sep_key_dead(char *buf, size_t cap, sep_str_t prefix)
{
    return sep_key_join(buf, cap, prefix, "dead", SEP_STR_NULL);
}

size_t sep_key_running(char *buf, size_t cap, sep_str_t prefix)
{
    return sep_key_join(buf, cap, prefix, "running", SEP_STR_NULL);
}

size_t sep_key_expiry(char *buf, size_t cap, sep_str_t prefix)
{
    return sep_key_join(buf, cap, prefix, "expiry", SEP_STR_NULL);
}

size_t sep_key_events(char *buf, size_t cap, sep_str_t prefix, sep_str_t id)
{
    return sep_key_with_part(buf, cap, prefix, "ev:", id);
}

size_t sep_key_worker(char *buf, size_t cap, sep_str_t prefix, sep_str_t name)
{
    return sep_key_with_part(buf, cap, prefix, "worker:", name);
}

size_t sep_key_workers(char *buf, size_t cap, sep_str_t prefix)
{
    return sep_key_join(buf, cap, prefix, "workers", SEP_STR_NULL);
}

size_t sep_key_stats(char *buf, size_t cap, sep_str_t prefix)
{
    return sep_key_join(buf, cap, prefix, "stats", SEP_STR_NULL);
}

size_t sep_key_idem(char *buf, size_t cap, sep_str_t prefix, sep_str_t key)
{
    if (!sep_idempotency_key_valid(key))
        return 0;
    return sep_key_join(buf, cap, prefix, "idem:", key);
}

int sep_job_keys(sep_job_keys_t *keys, sep_str_t prefix, sep_str_t id)
{
    keys->len[0] = sep_key_job(keys->key[0], SEP_KEY_MAX, prefix, id);
    keys->len[1] = sep_key_stats(keys->key[1], SEP_KEY_MAX, prefix);
    keys->len[2] = sep_key_queue(keys->key[2], SEP_KEY_MAX, prefix, SEP_PRIORITY_HIGH);
    keys->len[3] = sep_key_queue(keys->key[3], SEP_KEY_MAX, prefix, SEP_PRIORITY_NORMAL);
    keys->len[4] = sep_key_delayed(keys->key[4], SEP_KEY_MAX, prefix);
    keys->len[5] = sep_key_running(keys->key[5], SEP_KEY_MAX, prefix);
    keys->len[6] = sep_key_expiry(keys->key[6], SEP_KEY_MAX, prefix);
    keys->len[7] = sep_key_dead(keys->key[7], SEP_KEY_MAX, prefix);
    for (int i = 0; i < SEP_JOB_KEYS; i++) {
        if (keys->len[i] == 0)
            return -1;
    }
    return 0;
}

const char *sep_priority_name(sep_priority_t priority)
{
    return priority == SEP_PRIORITY_HIGH ? "high" : "normal";
}

int sep_priority_from_name(sep_str_t name, sep_priority_t *out)
{
    if (sep_str_eq(name, "high")) {
        *out = SEP_PRIORITY_HIGH;
        return 0;
    }
    if (sep_str_eq(name, "normal")) {
        *out = SEP_PRIORITY_NORMAL;
        return 0;
    }
    return -1;
}

int sep_idempotency_key_valid(sep_str_t key)
{
    return sep_visible_ascii(key, SEP_KEY_PART_MAX);
}
