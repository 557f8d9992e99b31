/*
 * fuzz_ring.c - libFuzzer target over what crosses the shared-memory region between
 * the supervisor and a device worker (shared/sep_ring.c): a device worker (or a
 * corrupted region) can write anything there. Two checks per input:
 *   - the first sizeof(sep_msg) bytes as a message, validated against a real region's
 *     geometry (sep_msg_validate); an accepted BATCH must name slots inside the arena;
 *   - the input as the start of a region's header, attached from a memfd of the size
 *     the header claims, capped (sep_shm_attach must refuse, never map out of bounds).
 * FUZZ_RING_WRITE_SEEDS=DIR makes the binary write the seed corpus (a real region and
 * valid messages of each type) into DIR and exit: tests/fuzz/ring/ was made so.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shared/sep_ring.h"

static sep_shm region;
static int have_region;

static void check_message(const uint8_t *data, size_t size)
{
    char err[256];
    if (!have_region) {
        if (sep_shm_create(&region, 8, 4, 1024, 4096, err, sizeof(err)) != 0)
            abort();
        have_region = 1;
    }
    sep_msg m;
    memset(&m, 0, sizeof(m));
    memcpy(&m, data, size < sizeof(m) ? size : sizeof(m));
    if (sep_msg_validate(&region, &m, err, sizeof(err)) != 0)
        return;
    if (m.type == SEP_MSG_BATCH) {
        if (m.count < 1 || (uint64_t)m.slot + (uint64_t)m.count > region.slots)
            abort();
        /* touch the first and last float of every slot the batch names */
        for (int i = 0; i < m.count; i++) {
            float *in = sep_shm_in(&region, m.slot + (uint32_t)i);
            float *out = sep_shm_out(&region, m.slot + (uint32_t)i);
            in[0] = in[region.slot_in_floats - 1] = 0;
            out[0] = out[region.slot_out_floats - 1] = 0;
        }
    }
}

static void check_attach(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz-ring", MFD_CLOEXEC);
    if (fd < 0)
        abort();
    /* the region is as large as the header says, within 1 MiB, else as the input */
    size_t total = size;
    if (size >= sizeof(sep_shm_hdr)) {
        const sep_shm_hdr *h = (const void *)data;
        if (h->total <= (1u << 20) && h->total >= size)
            total = (size_t)h->total;
    }
    if (ftruncate(fd, (off_t)total) != 0 || (size && pwrite(fd, data, size, 0) != (ssize_t)size))
        abort();
    int e1 = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), e2 = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    sep_shm s;
    memset(&s, 0, sizeof(s));
    char err[256];
    if (sep_shm_attach(&s, fd, e1, e2, err, sizeof(err)) == 0) {
        /* attached: every ring cell and slot lies inside the mapping */
        for (int w = 0; w < 2; w++) {
            sep_msg m;
            while (sep_ring_pop(&s, w, &m) == 1)
                ;
        }
        if (s.slots) {
            sep_shm_in(&s, s.slots - 1)[s.slot_in_floats - 1] = 0;
            sep_shm_out(&s, s.slots - 1)[s.slot_out_floats - 1] = 0;
        }
    }
    sep_shm_close(&s); /* closes the fds it was given, attached or not */
}

static void write_file(const char *dir, const char *name, const void *p, size_t n)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0)
        abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *dir = getenv("FUZZ_RING_WRITE_SEEDS");
    if (!dir)
        return 0;
    sep_shm s;
    char err[256];
    if (sep_shm_create(&s, 4, 2, 16, 64, err, sizeof(err)) != 0)
        abort();
    sep_msg m;
    memset(&m, 0, sizeof(m));
    m.type = SEP_MSG_BATCH;
    m.id = 7;
    m.length = 16;
    m.channels = 2;
    m.sources = 4;
    m.count = 2;
    snprintf(m.model, sizeof(m.model), "htdemucs");
    if (sep_ring_push(&s, SEP_RING_CMD, &m) != 0)
        abort();
    write_file(dir, "region", s.base, s.size); /* header, rings (one BATCH queued), arena */
    write_file(dir, "batch", &m, sizeof(m));
    memset(&m, 0, sizeof(m));
    m.type = SEP_MSG_DONE;
    m.id = 7;
    m.status = SEP_MSG_EDEVICE;
    snprintf(m.text, sizeof(m.text), "out of memory");
    write_file(dir, "done", &m, sizeof(m));
    memset(&m, 0, sizeof(m));
    m.type = SEP_MSG_READY;
    m.pid = 1234;
    snprintf(m.text, sizeof(m.text), "cpu");
    write_file(dir, "ready", &m, sizeof(m));
    m.type = SEP_MSG_STOP;
    write_file(dir, "stop", &m, sizeof(m));
    sep_shm_close(&s);
    exit(0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_message(data, size);
    check_attach(data, size);
    return 0;
}
