/*
 * Job ids: 128-bit random UUIDv4 in canonical lowercase text form
 * ("xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx", 36 characters).
 *
 * Ids come straight from the kernel's CSPRNG (getrandom(2)) on every call: no
 * user-space pool, so processes forked from one parent (nginx workers) can never
 * hand out the same id. An id string from a client is accepted only in exactly the
 * form generated here, so it can be used in Redis keys and spool paths as is.
 */
#ifndef SEP_ID_H
#define SEP_ID_H

#include <stddef.h>

#define SEP_ID_LEN 36

/* Writes a new id and a terminating NUL into out. Returns 0, or -1 with errno set
 * when the kernel's random source failed. */
int sep_id_generate(char out[SEP_ID_LEN + 1]);

/* 1 when s[0..len) is a canonical lowercase UUIDv4 text, else 0. */
int sep_id_valid(const char *s, size_t len);

#endif
