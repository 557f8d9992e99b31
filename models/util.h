/*
 * util.h - small helpers shared by the engine, the apply layer, workerd, the tests
 * and the benchmarks: wall-clock and CPU-time clocks, and formatting an error message
 * into a caller's buffer. Header-only (static inline), so each library or program
 * takes only what it uses and links nothing extra.
 */
#ifndef SEP_MODELS_UTIL_H
#define SEP_MODELS_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/resource.h>
#include <time.h>

/* Seconds on the monotonic clock (for intervals only). */
static inline double sep_wall_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* User + system CPU seconds of the whole process, all threads. */
static inline double sep_cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

/* printf into err[errlen] (always terminated); does nothing when err is NULL or empty. */
__attribute__((format(printf, 3, 4))) static inline void sep_set_err(char *err, size_t errlen,
                                                                     const char *fmt, ...)
{
    va_list ap;
    if (!err || !errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

#endif
