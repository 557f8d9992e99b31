/*
 * test_ring.c - unit tests of shared/sep_ring: empty/full, FIFO order, wraparound of
 * the ring and of the 32-bit indices, eventfd wakeups only on empty -> non-empty,
 * corrupt indices and bad messages rejected, header validation on attach, and 100k
 * messages each way between two threads and (not under TSan) two processes.
 *
 * Built twice: with ASan + UBSan (make test-ring) and with ThreadSanitizer
 * (make test-ring-tsan, SEP_RING_TSAN defined: the fork case is left out).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shared/sep_ring.h"

#define N_MESSAGES 100000

static sep_msg msg(uint32_t type, uint32_t id)
{
    sep_msg m;
    memset(&m, 0, sizeof(m));
    m.type = type;
    m.id = id;
    return m;
}

static sep_msg batch(uint32_t id, int count)
{
    sep_msg m = msg(SEP_MSG_BATCH, id);
    strcpy(m.model, "htdemucs");
    m.length = 100;
    m.channels = 2;
    m.sources = 4;
    m.slot = 0;
    m.count = count;
    return m;
}

static uint64_t efd_value(sep_shm *s, int which)
{
    uint64_t v = 0;
    if (read(sep_ring_fd(s, which), &v, sizeof(v)) != (ssize_t)sizeof(v))
        return 0; /* EAGAIN: no wakeup pending */
    return v;
}

static void test_layout(void **state)
{
    (void)state;
    assert_int_equal(sizeof(sep_msg), 512);
    assert_int_equal(offsetof(sep_ring_ctl, tail) - offsetof(sep_ring_ctl, head), 64);
    sep_shm s;
    char err[256];
    assert_int_equal(sep_shm_create(&s, 5, 3, 1000, 4000, err, sizeof(err)), 0);
    assert_int_equal(s.ring[SEP_RING_CMD].cap, 8); /* rounded up to a power of two */
    assert_int_equal(s.slots, 3);
    assert_true(s.slot_in_floats >= 1000 && s.slot_out_floats >= 4000);
    assert_int_equal((uintptr_t)s.ring[0].ctl % 64, 0);
    assert_int_equal((uintptr_t)s.ring[1].ctl % 64, 0);
    assert_int_equal((uintptr_t)sep_shm_in(&s, 0) % 4096, 0);
    assert_int_equal((uintptr_t)sep_shm_out(&s, 2) % 4096, 0);
    assert_null(sep_shm_in(&s, 3));
    /* slots are disjoint and writable to their last float */
    for (uint32_t i = 0; i < 3; i++) {
        sep_shm_in(&s, i)[s.slot_in_floats - 1] = (float)i;
        sep_shm_out(&s, i)[s.slot_out_floats - 1] = (float)i;
    }
    for (uint32_t i = 0; i < 3; i++)
        assert_true(sep_shm_in(&s, i)[s.slot_in_floats - 1] == (float)i);
    assert_true((char *)(sep_shm_out(&s, 2) + s.slot_out_floats) <= (char *)s.base + s.size);
    sep_shm_close(&s);
    assert_int_equal(sep_shm_create(&s, 4, 0, 10, 10, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "geometry"));
}

static void test_empty_full_fifo(void **state)
{
    (void)state;
    sep_shm s;
    char err[256];
    assert_int_equal(sep_shm_create(&s, 4, 1, 16, 16, err, sizeof(err)), 0);
    sep_msg m;
    assert_int_equal(sep_ring_pop(&s, SEP_RING_CMD, &m), 0);
    assert_int_equal(sep_ring_count(&s, SEP_RING_CMD), 0);
    for (uint32_t i = 0; i < 4; i++) {
        sep_msg in = msg(SEP_MSG_STOP, i);
        assert_int_equal(sep_ring_push(&s, SEP_RING_CMD, &in), 0);
    }
    sep_msg extra = msg(SEP_MSG_STOP, 99);
    assert_int_equal(sep_ring_push(&s, SEP_RING_CMD, &extra), -1); /* full */
    assert_int_equal(sep_ring_count(&s, SEP_RING_CMD), 4);
    assert_int_equal(sep_ring_count(&s, SEP_RING_EVT), 0); /* the rings are independent */
    for (uint32_t i = 0; i < 4; i++) {
        assert_int_equal(sep_ring_pop(&s, SEP_RING_CMD, &m), 1);
        assert_int_equal(m.id, i);
    }
    assert_int_equal(sep_ring_pop(&s, SEP_RING_CMD, &m), 0);
    assert_int_equal(sep_ring_wait_pop(&s, SEP_RING_CMD, &m, 10), 0); /* timeout */
    sep_shm_close(&s);
}

static void test_wraparound(void **state)
{
    (void)state;
    sep_shm s;
    char err[256];
    assert_int_equal(sep_shm_create(&s, 4, 1, 16, 16, err, sizeof(err)), 0);
    /* start just below the 32-bit wrap of the free-running indices */
    for (int r = 0; r < 2; r++) {
        atomic_store(&s.ring[r].ctl->head, UINT32_MAX - 5);
        atomic_store(&s.ring[r].ctl->tail, UINT32_MAX - 5);
    }
    uint32_t next_in = 0, next_out = 0;
    sep_msg m;
    for (int round = 0; round < 1000; round++) {
        int k = 1 + round % 4; /* fill 1..4 (full) then drain, crossing cells and the wrap */
        for (int i = 0; i < k; i++) {
            sep_msg in = msg(SEP_MSG_DONE, next_in++);
            in.status = (int32_t)(in.id * 7);
            assert_int_equal(sep_ring_push(&s, SEP_RING_EVT, &in), 0);
        }
        if (k == 4) {
            sep_msg in = msg(SEP_MSG_DONE, 12345);
            assert_int_equal(sep_ring_push(&s, SEP_RING_EVT, &in), -1);
        }
        for (int i = 0; i < k; i++) {
            assert_int_equal(sep_ring_pop(&s, SEP_RING_EVT, &m), 1);
            assert_int_equal(m.id, next_out);
            assert_int_equal(m.status, (int32_t)(next_out * 7));
            next_out++;
        }
        assert_int_equal(sep_ring_pop(&s, SEP_RING_EVT, &m), 0);
    }
    assert_true(atomic_load(&s.ring[SEP_RING_EVT].ctl->head) < 10000); /* it did wrap */
    sep_shm_close(&s);
}

static void test_wakeup_only_when_empty(void **state)
{
    (void)state;
    sep_shm s;
    char err[256];
    assert_int_equal(sep_shm_create(&s, 8, 1, 16, 16, err, sizeof(err)), 0);
    sep_msg m = msg(SEP_MSG_STOP, 1), out;
    assert_int_equal(efd_value(&s, SEP_RING_CMD), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(sep_ring_push(&s, SEP_RING_CMD, &m), 0);
    assert_int_equal(efd_value(&s, SEP_RING_CMD), 1); /* one signal for three pushes */
    assert_int_equal(sep_ring_pop(&s, SEP_RING_CMD, &out), 1);
    assert_int_equal(sep_ring_push(&s, SEP_RING_CMD, &m), 0); /* not empty: no signal */
    assert_int_equal(efd_value(&s, SEP_RING_CMD), 0);
    while (sep_ring_pop(&s, SEP_RING_CMD, &out) == 1)
        ;
    assert_int_equal(sep_ring_push(&s, SEP_RING_CMD, &m), 0); /* was empty: signal */
    struct pollfd pfd = {.fd = sep_ring_fd(&s, SEP_RING_CMD), .events = POLLIN};
    assert_int_equal(poll(&pfd, 1, 0), 1);
    assert_int_equal(sep_ring_wait_pop(&s, SEP_RING_CMD, &out, 0), 1);
    assert_int_equal(efd_value(&s, SEP_RING_EVT), 0);
    /* reset empties both rings and pending wakeups */
    assert_int_equal(sep_ring_push(&s, SEP_RING_EVT, &m), 0);
    sep_shm_reset(&s);
    assert_int_equal(sep_ring_count(&s, SEP_RING_EVT), 0);
    assert_int_equal(
        poll(&(struct pollfd){.fd = sep_ring_fd(&s, SEP_RING_EVT), .events = POLLIN}, 1, 0), 0);
    sep_shm_close(&s);
}

static void test_corrupt_indices(void **state)
{
    (void)state;
    sep_shm s;
    char err[256];
    assert_int_equal(sep_shm_create(&s, 4, 1, 16, 16, err, sizeof(err)), 0);
    atomic_store(&s.ring[SEP_RING_CMD].ctl->tail, 4 + 9); /* tail - head > cap */
    sep_msg m = msg(SEP_MSG_STOP, 0);
    assert_int_equal(sep_ring_pop(&s, SEP_RING_CMD, &m), -1);
    assert_int_equal(sep_ring_push(&s, SEP_RING_CMD, &m), -1); /* never overwrite */
    assert_int_equal(sep_ring_wait_pop(&s, SEP_RING_CMD, &m, 0), -1);
    sep_shm_close(&s);
}

static void test_validate(void **state)
{
    (void)state;
    sep_shm s;
    char err[256];
    /* 4 slots of 2 x 100 in, 4 x 2 x 100 out */
    assert_int_equal(sep_shm_create(&s, 4, 4, 200, 800, err, sizeof(err)), 0);
    s.slot_in_floats = 200; /* exact bounds for the test (the arena rounds up to pages) */
    s.slot_out_floats = 800;
    sep_msg m = batch(1, 4);
    assert_int_equal(sep_msg_validate(&s, &m, err, sizeof(err)), 0);
    sep_msg stop = msg(SEP_MSG_STOP, 0);
    assert_int_equal(sep_msg_validate(&s, &stop, err, sizeof(err)), 0);

#define REJECT(stmt, needle)                                                                       \
    do {                                                                                           \
        sep_msg x = batch(1, 4);                                                                   \
        stmt;                                                                                      \
        err[0] = 0;                                                                                \
        assert_int_equal(sep_msg_validate(&s, &x, err, sizeof(err)), -1);                          \
        assert_non_null(strstr(err, needle));                                                      \
    } while (0)
    REJECT(x.type = 77, "unknown type");
    REJECT(x.slot = 1, "slots [1, 1 + 4) out of range");
    REJECT((x.slot = 4, x.count = 1), "out of range");
    REJECT((x.slot = 0xffffffffu, x.count = 2), "out of range");
    {
        sep_msg ok = batch(2, 1);
        ok.slot = 3;
        assert_int_equal(sep_msg_validate(&s, &ok, err, sizeof(err)), 0);
    }
    REJECT(x.count = 0, "count 0");
    REJECT(x.count = SEP_RING_MAX_BATCH + 1, "count");
    REJECT(x.count = -3, "count");
    REJECT(x.length = 101, "does not fit");
    REJECT(x.sources = 5, "does not fit");
    REJECT((x.channels = 1 << 20, x.length = 1 << 20), "does not fit");
    REJECT(x.length = 0, "bad model_index");
    REJECT(x.model_index = -1, "bad model_index");
    REJECT(strcpy(x.model, "../etc/passwd"), "model name");
    REJECT(strcpy(x.model, ".hidden"), "model name");
    REJECT(x.model[0] = 0, "model name");
    REJECT(memset(x.model, 'a', sizeof(x.model)), "model name");
    REJECT(memset(x.text, 'a', sizeof(x.text)), "text");
    sep_shm_close(&s);
}

static void test_attach_checks(void **state)
{
    (void)state;
    char err[256];
    sep_shm s, a;
    assert_int_equal(sep_shm_create(&s, 16, 2, 64, 256, err, sizeof(err)), 0);
    /* attach a second mapping of the same region: shared cells */
    assert_int_equal(sep_shm_attach(&a, dup(s.memfd), dup(sep_ring_fd(&s, 0)),
                                    dup(sep_ring_fd(&s, 1)), err, sizeof(err)),
                     0);
    assert_int_equal(a.slots, 2);
    sep_msg m = batch(5, 2), out;
    assert_int_equal(sep_ring_push(&s, SEP_RING_CMD, &m), 0);
    assert_int_equal(sep_ring_wait_pop(&a, SEP_RING_CMD, &out, 1000), 1);
    assert_int_equal(out.id, 5);
    sep_shm_in(&s, 1)[3] = 42.f;
    assert_true(sep_shm_in(&a, 1)[3] == 42.f);
    sep_shm_close(&a);

    /* a tampered header is refused */
    sep_shm_hdr *h = s.base;
    h->slots = 1000;
    assert_int_equal(sep_shm_attach(&a, dup(s.memfd), dup(sep_ring_fd(&s, 0)),
                                    dup(sep_ring_fd(&s, 1)), err, sizeof(err)),
                     -1);
    assert_non_null(strstr(err, "header"));
    h->slots = 2;
    h->in_off += 64;
    assert_int_equal(sep_shm_attach(&a, dup(s.memfd), dup(sep_ring_fd(&s, 0)),
                                    dup(sep_ring_fd(&s, 1)), err, sizeof(err)),
                     -1);
    sep_shm_close(&s);

    /* too small, and not a region at all */
    int fd = memfd_create("x", MFD_CLOEXEC);
    assert_int_equal(sep_shm_attach(&a, fd, dup(0), dup(0), err, sizeof(err)), -1);
    assert_non_null(strstr(err, "too small"));
    fd = memfd_create("x", MFD_CLOEXEC);
    assert_int_equal(ftruncate(fd, 1 << 16), 0);
    assert_int_equal(sep_shm_attach(&a, fd, dup(0), dup(0), err, sizeof(err)), -1);
    assert_non_null(strstr(err, "header"));
}

/* --- 100k messages each way: the consumer echoes every command as an event ------- */

#define WINDOW 48 /* < ring capacity 64: neither ring can fill */

static int echo_loop(sep_shm *s)
{
    for (uint32_t expect = 0; expect < N_MESSAGES;) {
        sep_msg m;
        int r = sep_ring_wait_pop(s, SEP_RING_CMD, &m, 5000);
        if (r < 0)
            return 1;
        if (r == 0)
            continue;
        if (m.id != expect || m.length != (int32_t)(expect ^ 0x5a5a) || strcmp(m.model, "seq") != 0)
            return 2;
        m.type = SEP_MSG_DONE;
        m.status = (int32_t)(m.id * 3u);
        if (sep_ring_push(s, SEP_RING_EVT, &m))
            return 3;
        expect++;
    }
    return 0;
}

static int drive(sep_shm *s)
{
    uint32_t sent = 0, got = 0;
    while (got < N_MESSAGES) {
        while (sent < N_MESSAGES && sent - got < WINDOW) {
            sep_msg m = msg(SEP_MSG_BATCH, sent);
            m.length = (int32_t)(sent ^ 0x5a5a);
            strcpy(m.model, "seq");
            if (sep_ring_push(s, SEP_RING_CMD, &m))
                return 1;
            sent++;
        }
        sep_msg e;
        int r = sep_ring_wait_pop(s, SEP_RING_EVT, &e, 5000);
        if (r < 0)
            return 2;
        if (r == 0)
            continue;
        if (e.type != SEP_MSG_DONE || e.id != got || e.status != (int32_t)(got * 3u))
            return 3;
        got++;
    }
    return 0;
}

static void *echo_thread(void *arg)
{
    return (void *)(intptr_t)echo_loop(arg);
}

static void test_two_threads(void **state)
{
    (void)state;
    sep_shm s;
    char err[256];
    assert_int_equal(sep_shm_create(&s, 64, 1, 16, 16, err, sizeof(err)), 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, echo_thread, &s), 0);
    assert_int_equal(drive(&s), 0);
    void *rc;
    pthread_join(t, &rc);
    assert_int_equal((intptr_t)rc, 0);
    assert_int_equal(sep_ring_count(&s, SEP_RING_CMD), 0);
    assert_int_equal(sep_ring_count(&s, SEP_RING_EVT), 0);
    sep_shm_close(&s);
}

#ifndef SEP_RING_TSAN
static void test_two_processes(void **state)
{
    (void)state;
    sep_shm s;
    char err[256];
    assert_int_equal(sep_shm_create(&s, 64, 2, 1024, 1024, err, sizeof(err)), 0);
    for (int i = 0; i < 1024; i++)
        sep_shm_in(&s, 1)[i] = (float)i;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* the child maps the region again from its fds, as a device worker does */
        sep_shm c;
        if (sep_shm_attach(&c, dup(s.memfd), dup(sep_ring_fd(&s, 0)), dup(sep_ring_fd(&s, 1)), err,
                           sizeof(err)))
            _exit(10);
        for (int i = 0; i < 1024; i++)
            sep_shm_out(&c, 0)[i] = 2.f * sep_shm_in(&c, 1)[i];
        _exit(echo_loop(&c));
    }
    assert_int_equal(drive(&s), 0);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    for (int i = 0; i < 1024; i++)
        assert_true(sep_shm_out(&s, 0)[i] == 2.f * (float)i);
    sep_shm_close(&s);
}
#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout),          cmocka_unit_test(test_empty_full_fifo),
        cmocka_unit_test(test_wraparound),      cmocka_unit_test(test_wakeup_only_when_empty),
        cmocka_unit_test(test_corrupt_indices), cmocka_unit_test(test_validate),
        cmocka_unit_test(test_attach_checks),   cmocka_unit_test(test_two_threads),
#ifndef SEP_RING_TSAN
        cmocka_unit_test(test_two_processes),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
