/*
 * test_config.c - `workerd run` settings (workerd/config.h): defaults, the INI file
 * (inih), flags overriding it, durations, errors naming file:line or the flag, rules
 * between settings, reload (a failed load keeps the old config; settings needing a
 * restart named), --help listing every setting, the printed config reading back, and
 * conf/workerd.conf holding every setting at its default.
 *
 * usage: test_config [REPO_ROOT]   (cmocka; REPO_ROOT defaults to .)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "workerd/config.h"

static const char *repo = ".";
static char dir[256];

static const char *write_file(const char *name, const char *text)
{
    static char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

/* sep_workerd_config_load on a NULL-terminated argument list (argv[0] = "run"). */
static int load(sep_workerd_config *c, char *err, size_t errlen, ...)
{
    char *argv[64] = {"run"};
    int argc = 1;
    va_list ap;
    va_start(ap, errlen);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && argc < 63)
        argv[argc++] = (char *)a;
    va_end(ap);
    err[0] = '\0';
    return sep_workerd_config_load(c, argc, argv, err, errlen);
}

static void assert_contains(const char *hay, const char *needle)
{
    if (!strstr(hay, needle))
        fail_msg("'%s' does not contain '%s'", hay, needle);
}

static void test_defaults(void **state)
{
    (void)state;
    sep_workerd_config c;
    char err[512];
    assert_int_equal(load(&c, err, sizeof(err), NULL), 0);
    assert_string_equal(c.redis, "127.0.0.1:6379");
    assert_string_equal(c.prefix, "{sep}:");
    assert_string_equal(c.device, "auto");
    assert_true(c.name[0] != '\0'); /* the host name */
    assert_int_equal(c.cpu_workers, 1);
    assert_int_equal(c.threads, 0);
    assert_int_equal(c.max_batch, 4);
    assert_int_equal(c.concurrency, 2);
    assert_int_equal(c.gpus, 1);
    assert_true(c.orphan_age == 3600);
    assert_int_equal(c.dead_max, 10000);
    assert_int_equal(c.verbose, 0);
    assert_true(c.visibility_timeout == 60);
    assert_true(c.heartbeat_interval == 5);
    assert_true(c.retry_backoff_base == 2);
    assert_true(c.retry_backoff_max == 300);
    assert_true(c.soft_time_limit == 3600);
    assert_true(c.hard_time_limit == 3900);
    assert_true(c.drain_timeout == 30);
    assert_true(c.janitor_interval == 60);
    assert_string_equal(c.config_path, "");
}

static void test_file_and_flags(void **state)
{
    (void)state;
    const char *path = write_file("a.conf", "# comment\n"
                                            "; another\n"
                                            "redis = unix:/run/redis.sock db=2\n"
                                            "[workerd]\n"
                                            "prefix = {sep}:\n"
                                            "name = host-a\n"
                                            "max_batch = 8\n"
                                            "max-jobs-per-worker = 50\n"
                                            "visibility_timeout = 2m\n"
                                            "heartbeat_interval = 1500ms\n"
                                            "soft_time_limit = 1h30m\n"
                                            "hard_time_limit = 0\n"
                                            "concurrency = 3   ; inline comment\n"
                                            "device = cpu\n"
                                            "verbose = 1\n");
    sep_workerd_config c;
    char err[512];
    assert_int_equal(load(&c, err, sizeof(err), "-c", path, NULL), 0);
    assert_string_equal(c.redis, "unix:/run/redis.sock db=2");
    assert_string_equal(c.prefix, "{sep}:");
    assert_string_equal(c.name, "host-a");
    assert_int_equal(c.max_batch, 8);
    assert_int_equal(c.max_jobs_per_worker, 50);
    assert_true(c.visibility_timeout == 120);
    assert_true(c.heartbeat_interval == 1.5);
    assert_true(c.soft_time_limit == 5400);
    assert_true(c.hard_time_limit == 0);
    assert_int_equal(c.concurrency, 3);
    assert_string_equal(c.device, "cpu");
    assert_int_equal(c.verbose, 1);
    assert_string_equal(c.config_path, path);

    /* flags win over the file, in both spellings, wherever -c stands */
    assert_int_equal(load(&c, err, sizeof(err), "--max-batch", "16", "--name=host-b", "--config",
                          path, "--redis", "10.0.0.1:6380", "-vv", "--spool", "/srv/spool",
                          "--drain-timeout", "5s", "--cpu-workers", "2", "--threads", "1", NULL),
                     0);
    assert_int_equal(c.max_batch, 16);
    assert_string_equal(c.name, "host-b");
    assert_string_equal(c.redis, "10.0.0.1:6380");
    assert_string_equal(c.spool, "/srv/spool");
    assert_int_equal(c.verbose, 2);
    assert_true(c.drain_timeout == 5);
    assert_int_equal(c.cpu_workers, 2);
    assert_int_equal(c.threads, 1);
    assert_int_equal(c.concurrency, 3); /* from the file */

    /* every setting has its flag */
    assert_int_equal(load(&c, err, sizeof(err), "--prefix", "x:", "--models-dir", "/m", "--device",
                          "cuda", "--concurrency", "5", "--max-jobs-per-worker", "7",
                          "--visibility-timeout", "90", "--heartbeat-interval", "10", "--gpus", "4",
                          "--retry-backoff-base", "1s", "--retry-backoff-max", "1m",
                          "--soft-time-limit", "10m", "--hard-time-limit", "20m",
                          "--janitor-interval", "2m", "--dead-max", "99", "--verbose", NULL),
                     0);
    assert_string_equal(c.prefix, "x:");
    assert_string_equal(c.models_dir, "/m");
    assert_string_equal(c.device, "cuda");
    assert_int_equal(c.concurrency, 5);
    assert_int_equal(c.max_jobs_per_worker, 7);
    assert_true(c.visibility_timeout == 90 && c.heartbeat_interval == 10);
    assert_int_equal(c.gpus, 4);
    assert_true(c.retry_backoff_base == 1 && c.retry_backoff_max == 60);
    assert_true(c.soft_time_limit == 600 && c.hard_time_limit == 1200);
    assert_true(c.janitor_interval == 120);
    assert_int_equal(c.dead_max, 99);
    assert_int_equal(c.verbose, 1);
}

static void expect_file_error(const char *text, const char *needle)
{
    const char *path = write_file("bad.conf", text);
    sep_workerd_config c;
    sep_workerd_config_defaults(&c);
    c.max_batch = 77; /* untouched on failure */
    char err[512];
    assert_int_equal(load(&c, err, sizeof(err), "-c", path, NULL), -1);
    assert_contains(err, path);
    assert_contains(err, needle);
    assert_int_equal(c.max_batch, 77);
}

static void test_file_errors(void **state)
{
    (void)state;
    expect_file_error("max_batch = 4\n\nmax_bacth = 4\n", ":3: unknown setting 'max_bacth'");
    expect_file_error("[workerd]\nmax_batch = many\n",
                      ":2: max_batch: 'many' is not an integer in [1, 1024]");
    expect_file_error("max_batch = 0\n", ":1: max_batch: '0' is not an integer");
    expect_file_error("a = 1\n", ":1: unknown setting 'a'");
    expect_file_error("visibility_timeout = 10 parsecs\n", ":1: visibility_timeout: '10 parsecs'");
    expect_file_error("soft_time_limit = -5s\n", ":1: soft_time_limit");
    expect_file_error("device = tpu\n", ":1: device: 'tpu' is not a device");
    expect_file_error("prefix = has space\n", ":1: prefix");
    expect_file_error("redis =\n", ":1: redis: must not be empty");
    expect_file_error("\n[redis]\nhost = x\n", ":2: unknown section [redis]");
    expect_file_error("max_batch = 4\nthis line has no equals sign\n", ":2: syntax error");
    char longline[400];
    memset(longline, 'x', sizeof(longline));
    memcpy(longline, "spool = /", 9);
    longline[sizeof(longline) - 2] = '\n';
    longline[sizeof(longline) - 1] = '\0';
    char text[512];
    snprintf(text, sizeof(text), "max_batch = 2\n%s", longline);
    expect_file_error(text, ":2: line too long");

    sep_workerd_config c;
    char err[512];
    assert_int_equal(load(&c, err, sizeof(err), "-c", "/nonexistent/workerd.conf", NULL), -1);
    assert_contains(err, "cannot read config file '/nonexistent/workerd.conf'");
}

static void test_flag_errors(void **state)
{
    (void)state;
    sep_workerd_config c;
    char err[512];
    assert_int_equal(load(&c, err, sizeof(err), "--max-batch", "x", NULL), -1);
    assert_contains(err, "--max-batch: 'x' is not an integer");
    assert_int_equal(load(&c, err, sizeof(err), "--bogus", "1", NULL), -1);
    assert_contains(err, "unknown option '--bogus'");
    assert_int_equal(load(&c, err, sizeof(err), "--max_batch", "1", NULL), -1);
    assert_contains(err, "unknown option");
    assert_int_equal(load(&c, err, sizeof(err), "--redis", NULL), -1);
    assert_contains(err, "--redis needs a value");
    assert_int_equal(load(&c, err, sizeof(err), "-c", NULL), -1);
    assert_contains(err, "needs a file name");
    assert_int_equal(load(&c, err, sizeof(err), "stray", NULL), -1);
    assert_contains(err, "unexpected argument 'stray'");
    assert_int_equal(load(&c, err, sizeof(err), "--heartbeat-interval", "0", NULL), -1);
    assert_contains(err, "--heartbeat-interval");
    assert_int_equal(load(&c, err, sizeof(err), "--help", "--bogus", NULL), 1);
    assert_int_equal(load(&c, err, sizeof(err), "-h", NULL), 1);
}

static void test_cross_checks(void **state)
{
    (void)state;
    sep_workerd_config c;
    char err[512];
    assert_int_equal(load(&c, err, sizeof(err), "--visibility-timeout", "8s",
                          "--heartbeat-interval", "5s", NULL),
                     -1);
    assert_contains(err, "heartbeat_interval (5s) must be at most half of visibility_timeout");
    assert_int_equal(
        load(&c, err, sizeof(err), "--soft-time-limit", "2h", "--hard-time-limit", "1h", NULL), -1);
    assert_contains(err, "soft_time_limit");
    /* a soft limit without a hard one is fine */
    assert_int_equal(
        load(&c, err, sizeof(err), "--soft-time-limit", "2h", "--hard-time-limit", "0", NULL), 0);
    assert_int_equal(load(&c, err, sizeof(err), "--retry-backoff-base", "10m",
                          "--retry-backoff-max", "1m", NULL),
                     -1);
    assert_contains(err, "retry_backoff_base");
}

static void test_reload(void **state)
{
    (void)state;
    const char *path = write_file("r.conf", "concurrency = 2\nredis = 127.0.0.1:6379\n");
    char *argv[] = {"run", "-c", (char *)path, "--max-batch", "8", NULL};
    sep_workerd_config c, old;
    char err[512], which[256];
    assert_int_equal(sep_workerd_config_load(&c, 5, argv, err, sizeof(err)), 0);
    old = c;

    /* the file changes: limits apply at once, redis needs a restart; flags still win */
    write_file("r.conf", "concurrency = 6\nredis = 127.0.0.1:6400\nmax_batch = 2\n"
                         "soft_time_limit = 10m\n");
    assert_int_equal(sep_workerd_config_load(&c, 5, argv, err, sizeof(err)), 0);
    assert_int_equal(c.concurrency, 6);
    assert_int_equal(c.max_batch, 8);
    assert_true(c.soft_time_limit == 600);
    assert_int_equal(sep_workerd_config_restart_needed(&old, &c, which, sizeof(which)), 1);
    assert_string_equal(which, "redis");
    assert_int_equal(sep_workerd_config_restart_needed(&c, &c, which, sizeof(which)), 0);

    /* a broken file: the running config stays */
    old = c;
    write_file("r.conf", "concurrency = lots\n");
    assert_int_equal(sep_workerd_config_load(&c, 5, argv, err, sizeof(err)), -1);
    assert_contains(err, "r.conf:1: concurrency");
    assert_memory_equal(&c, &old, sizeof(c));
}

static void test_help_and_print(void **state)
{
    (void)state;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    sep_workerd_config_help(f);
    fclose(f);
    const char *flags[] = {"--redis",
                           "--prefix",
                           "--name",
                           "--spool",
                           "--models-dir",
                           "--device",
                           "--cpu-workers",
                           "--threads",
                           "--max-batch",
                           "--concurrency",
                           "--max-jobs-per-worker",
                           "--visibility-timeout",
                           "--heartbeat-interval",
                           "--gpus",
                           "--orphan-age",
                           "--retry-backoff-base",
                           "--retry-backoff-max",
                           "--soft-time-limit",
                           "--hard-time-limit",
                           "--drain-timeout",
                           "--janitor-interval",
                           "--dead-max",
                           "-v",
                           "--config"};
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
        assert_contains(buf, flags[i]);
    assert_contains(buf, "60s"); /* defaults shown */
    free(buf);

    /* the printed config reads back to the same settings */
    sep_workerd_config c, back;
    char err[512];
    assert_int_equal(load(&c, err, sizeof(err), "--name", "n1", "--heartbeat-interval", "250ms",
                          "--soft-time-limit", "0", NULL),
                     0);
    f = open_memstream(&buf, &len);
    sep_workerd_config_print(&c, f);
    fclose(f);
    const char *path = write_file("printed.conf", buf);
    free(buf);
    assert_int_equal(load(&back, err, sizeof(err), "-c", path, NULL), 0);
    memset(back.config_path, 0, sizeof(back.config_path));
    memset(c.config_path, 0, sizeof(c.config_path));
    assert_memory_equal(&c, &back, sizeof(c));
}

static void test_sample_conf(void **state)
{
    (void)state;
    char path[512], err[512];
    snprintf(path, sizeof(path), "%s/conf/workerd.conf", repo);
    sep_workerd_config c, d;
    if (load(&c, err, sizeof(err), "-c", path, NULL) != 0)
        fail_msg("%s", err);
    assert_int_equal(load(&d, err, sizeof(err), NULL), 0);
    memset(c.config_path, 0, sizeof(c.config_path));
    memset(d.config_path, 0, sizeof(d.config_path));
    /* the sample documents the defaults */
    assert_memory_equal(&c, &d, sizeof(c));
    /* and names every setting */
    FILE *f = fopen(path, "r");
    char text[16384];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    char *buf = NULL;
    size_t len = 0;
    f = open_memstream(&buf, &len);
    sep_workerd_config_print(&c, f);
    fclose(f);
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        char key[64];
        if (sscanf(line, "%63[a-z_] =", key) == 1) {
            char want[80];
            snprintf(want, sizeof(want), "\n%s =", key);
            assert_contains(text, want);
        }
    }
    free(buf);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/sep-config-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc > 1)
        repo = argv[1];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),       cmocka_unit_test(test_file_and_flags),
        cmocka_unit_test(test_file_errors),    cmocka_unit_test(test_flag_errors),
        cmocka_unit_test(test_cross_checks),   cmocka_unit_test(test_reload),
        cmocka_unit_test(test_help_and_print), cmocka_unit_test(test_sample_conf),
    };
    return cmocka_run_group_tests_name("workerd_config", tests, setup, teardown);
}
