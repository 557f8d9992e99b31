/*
 * sep_ring.c - the supervisor <-> device worker shared-memory region: memfd layout,
 * SPSC rings with acquire/release indices and eventfd wakeups, message validation.
 * The protocol and the memory-ordering argument are at the top of sep_ring.h.
 */
#include "shared/sep_ring.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ALIGN_UP(x, a) (((x) + (a)-1) / (a) * (a))
#define ARENA_ALIGN 4096u /* page-aligned slots (pinned-memory registration, DMA) */

static void set_err(char *err, size_t errlen, const char *fmt, const char *what)
{
    if (err && errlen)
        snprintf(err, errlen, fmt, what, strerror(errno));
}

static int geometry(sep_shm_hdr *h, uint32_t ring_cap, uint32_t slots, size_t in_f, size_t out_f)
{
    uint32_t cap = 2;
    while (cap < ring_cap && cap < (1u << 20))
        cap <<= 1;
    if (cap < ring_cap || slots == 0 || slots > (1u << 20) || in_f == 0 || out_f == 0)
        return -1;
    size_t ring_bytes = ALIGN_UP(sizeof(sep_ring_ctl) + (size_t)cap * sizeof(sep_msg), 64);
    size_t in_b = ALIGN_UP(in_f * sizeof(float), ARENA_ALIGN);
    size_t out_b = ALIGN_UP(out_f * sizeof(float), ARENA_ALIGN);
    if (in_b / sizeof(float) < in_f || (SIZE_MAX - ARENA_ALIGN * 4) / slots < in_b + out_b)
        return -1;
    memset(h, 0, sizeof(*h));
    h->magic = SEP_RING_MAGIC;
    h->version = SEP_RING_VERSION;
    h->msg_size = sizeof(sep_msg);
    h->ring_cap = cap;
    h->slots = slots;
    h->slot_in_floats = in_b / sizeof(float);
    h->slot_out_floats = out_b / sizeof(float);
    h->cmd_off = ALIGN_UP(sizeof(sep_shm_hdr), 64);
    h->evt_off = h->cmd_off + ring_bytes;
    h->in_off = ALIGN_UP(h->evt_off + ring_bytes, ARENA_ALIGN);
    h->out_off = h->in_off + (uint64_t)slots * in_b;
    h->total = h->out_off + (uint64_t)slots * out_b;
    return 0;
}

/* Fills the process-local view from a header already checked. */
static void bind_view(sep_shm *s, const sep_shm_hdr *h)
{
    char *b = s->base;
    s->ring[SEP_RING_CMD].ctl = (sep_ring_ctl *)(b + h->cmd_off);
    s->ring[SEP_RING_CMD].cells = (sep_msg *)(b + h->cmd_off + sizeof(sep_ring_ctl));
    s->ring[SEP_RING_EVT].ctl = (sep_ring_ctl *)(b + h->evt_off);
    s->ring[SEP_RING_EVT].cells = (sep_msg *)(b + h->evt_off + sizeof(sep_ring_ctl));
    s->ring[SEP_RING_CMD].cap = s->ring[SEP_RING_EVT].cap = h->ring_cap;
    s->in = (float *)(b + h->in_off);
    s->out = (float *)(b + h->out_off);
    s->slots = h->slots;
    s->slot_in_floats = h->slot_in_floats;
    s->slot_out_floats = h->slot_out_floats;
}

int sep_shm_create(sep_shm *s, uint32_t ring_cap, uint32_t slots, size_t slot_in_floats,
                   size_t slot_out_floats, char *err, size_t errlen)
{
    memset(s, 0, sizeof(*s));
    s->memfd = s->ring[0].efd = s->ring[1].efd = -1;
    sep_shm_hdr h;
    if (geometry(&h, ring_cap, slots, slot_in_floats, slot_out_floats)) {
        if (err && errlen)
            snprintf(err, errlen, "shm: bad geometry (ring %u, slots %u, slot %zu + %zu floats)",
                     ring_cap, slots, slot_in_floats, slot_out_floats);
        return -1;
    }
    s->memfd = memfd_create("sep-worker", MFD_CLOEXEC);
    if (s->memfd < 0) {
        set_err(err, errlen, "shm: %s: %s", "memfd_create");
        goto fail;
    }
    if (ftruncate(s->memfd, (off_t)h.total)) {
        set_err(err, errlen, "shm: %s: %s", "ftruncate");
        goto fail;
    }
    s->base = mmap(NULL, h.total, PROT_READ | PROT_WRITE, MAP_SHARED, s->memfd, 0);
    if (s->base == MAP_FAILED) {
        s->base = NULL;
        set_err(err, errlen, "shm: %s: %s", "mmap");
        goto fail;
    }
    s->size = h.total;
    for (int i = 0; i < 2; i++) {
        s->ring[i].efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (s->ring[i].efd < 0) {
            set_err(err, errlen, "shm: %s: %s", "eventfd");
            goto fail;
        }
    }
    memcpy(s->base, &h, sizeof(h)); /* the memfd starts zeroed: indices are 0 */
    bind_view(s, &h);
    return 0;
fail:
    sep_shm_close(s);
    return -1;
}

int sep_shm_attach(sep_shm *s, int memfd, int cmd_efd, int evt_efd, char *err, size_t errlen)
{
    memset(s, 0, sizeof(*s));
    s->memfd = memfd;
    s->ring[SEP_RING_CMD].efd = cmd_efd;
    s->ring[SEP_RING_EVT].efd = evt_efd;
    struct stat st;
    if (fstat(memfd, &st)) {
        set_err(err, errlen, "shm: %s: %s", "fstat");
        goto fail;
    }
    if ((size_t)st.st_size < sizeof(sep_shm_hdr)) {
        snprintf(err, errlen, "shm: region of %lld bytes is too small", (long long)st.st_size);
        goto fail;
    }
    s->base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (s->base == MAP_FAILED) {
        s->base = NULL;
        set_err(err, errlen, "shm: %s: %s", "mmap");
        goto fail;
    }
    s->size = (size_t)st.st_size;
    sep_shm_hdr h, want;
    memcpy(&h, s->base, sizeof(h)); /* one private copy, validated, then never re-read */
    /* Recompute the layout from the geometry: the offsets must be exactly ours. */
    if (h.magic != SEP_RING_MAGIC || h.version != SEP_RING_VERSION ||
        h.msg_size != sizeof(sep_msg) || h.slot_in_floats > SIZE_MAX / sizeof(float) ||
        h.slot_out_floats > SIZE_MAX / sizeof(float) ||
        geometry(&want, h.ring_cap, h.slots, h.slot_in_floats, h.slot_out_floats) ||
        memcmp(&want, &h, sizeof(h)) != 0 || h.total > s->size) {
        snprintf(err, errlen, "shm: region header is not a valid sep_ring v%d region",
                 SEP_RING_VERSION);
        goto fail;
    }
    bind_view(s, &h);
    return 0;
fail:
    sep_shm_close(s);
    return -1;
}

void sep_shm_close(sep_shm *s)
{
    if (s->base)
        munmap(s->base, s->size);
    if (s->memfd >= 0)
        close(s->memfd);
    for (int i = 0; i < 2; i++)
        if (s->ring[i].efd >= 0)
            close(s->ring[i].efd);
    memset(s, 0, sizeof(*s));
    s->memfd = s->ring[0].efd = s->ring[1].efd = -1;
}

void sep_shm_reset(sep_shm *s)
{
    for (int i = 0; i < 2; i++) {
        atomic_store_explicit(&s->ring[i].ctl->head, 0, memory_order_relaxed);
        atomic_store_explicit(&s->ring[i].ctl->tail, 0, memory_order_relaxed);
        sep_ring_clear(s, i);
    }
    atomic_thread_fence(memory_order_seq_cst);
}

float *sep_shm_in(const sep_shm *s, uint32_t slot)
{
    return slot < s->slots ? s->in + (size_t)slot * s->slot_in_floats : NULL;
}

float *sep_shm_out(const sep_shm *s, uint32_t slot)
{
    return slot < s->slots ? s->out + (size_t)slot * s->slot_out_floats : NULL;
}

static void wake(int efd)
{
    uint64_t one = 1;
    ssize_t r;
    do
        r = write(efd, &one, sizeof(one));
    while (r < 0 && errno == EINTR);
    /* EAGAIN only when the counter is at its maximum: a wakeup is pending anyway. */
}

int sep_ring_push(sep_shm *s, int which, const sep_msg *m)
{
    sep_ring *r = &s->ring[which];
    /* Only this side writes tail: relaxed is enough to read it back. */
    uint32_t tail = atomic_load_explicit(&r->ctl->tail, memory_order_relaxed);
    uint32_t head = atomic_load_explicit(&r->ctl->head, memory_order_acquire);
    if ((uint32_t)(tail - head) >= r->cap)
        return -1; /* full (or corrupt: never overwrite) */
    memcpy(&r->cells[tail & (r->cap - 1)], m, sizeof(*m));
    atomic_store_explicit(&r->ctl->tail, tail + 1, memory_order_release);
    /* Store tail, then load head: see the ordering note in sep_ring.h. */
    atomic_thread_fence(memory_order_seq_cst);
    head = atomic_load_explicit(&r->ctl->head, memory_order_acquire);
    if (head == tail)
        wake(r->efd);
    return 0;
}

int sep_ring_pop(sep_shm *s, int which, sep_msg *m)
{
    sep_ring *r = &s->ring[which];
    uint32_t head = atomic_load_explicit(&r->ctl->head, memory_order_relaxed);
    /* The consumer stored head just before (previous pop): order it before the load
     * of tail so a producer that saw the old head is seen here. */
    atomic_thread_fence(memory_order_seq_cst);
    uint32_t tail = atomic_load_explicit(&r->ctl->tail, memory_order_acquire);
    uint32_t used = tail - head;
    if (used == 0)
        return 0;
    if (used > r->cap)
        return -1;
    memcpy(m, &r->cells[head & (r->cap - 1)], sizeof(*m));
    atomic_store_explicit(&r->ctl->head, head + 1, memory_order_release);
    return 1;
}

uint32_t sep_ring_count(sep_shm *s, int which)
{
    sep_ring *r = &s->ring[which];
    uint32_t head = atomic_load_explicit(&r->ctl->head, memory_order_acquire);
    uint32_t tail = atomic_load_explicit(&r->ctl->tail, memory_order_acquire);
    return tail - head;
}

int sep_ring_fd(const sep_shm *s, int which)
{
    return s->ring[which].efd;
}

void sep_ring_clear(sep_shm *s, int which)
{
    uint64_t v;
    ssize_t r;
    do
        r = read(s->ring[which].efd, &v, sizeof(v));
    while (r < 0 && errno == EINTR);
}

int sep_ring_wait_pop(sep_shm *s, int which, sep_msg *m, int timeout_ms)
{
    for (;;) {
        int r = sep_ring_pop(s, which, m);
        if (r != 0)
            return r;
        struct pollfd pfd = {.fd = s->ring[which].efd, .events = POLLIN};
        int n = poll(&pfd, 1, timeout_ms);
        if (n <= 0)
            return n < 0 && errno != EINTR ? -1 : 0;
        sep_ring_clear(s, which);
        /* loop: the message (or a spurious wakeup) is re-checked by pop */
    }
}

static int plain_name(const char *p, size_t max)
{
    size_t n = strnlen(p, max);
    if (n == 0 || n == max || p[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (!(c == '_' || c == '-' || c == '.' || (c >= '0' && c <= '9') ||
              (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')))
            return 0;
    }
    return 1;
}

int sep_msg_validate(const sep_shm *s, const sep_msg *m, char *err, size_t errlen)
{
#define BAD(...)                                                                                   \
    do {                                                                                           \
        snprintf(err, errlen, __VA_ARGS__);                                                        \
        return -1;                                                                                 \
    } while (0)
    if (strnlen(m->text, sizeof(m->text)) == sizeof(m->text))
        BAD("message: text is not NUL-terminated");
    switch (m->type) {
    case SEP_MSG_STOP:
    case SEP_MSG_READY:
    case SEP_MSG_DONE:
        return 0;
    case SEP_MSG_BATCH:
        break;
    default:
        BAD("message: unknown type %u", m->type);
    }
    if (!plain_name(m->model, sizeof(m->model)))
        BAD("batch %u: bad model name", m->id);
    if (m->count < 1 || m->count > SEP_RING_MAX_BATCH)
        BAD("batch %u: count %d not in [1, %d]", m->id, m->count, SEP_RING_MAX_BATCH);
    if (m->model_index < 0 || m->length < 1 || m->channels < 1 || m->sources < 1)
        BAD("batch %u: bad model_index/length/channels/sources", m->id);
    uint64_t in_f = (uint64_t)m->channels * (uint64_t)m->length;
    uint64_t out_f = in_f * (uint64_t)m->sources;
    if (in_f > s->slot_in_floats || out_f > s->slot_out_floats)
        BAD("batch %u: segment of %d x %d (x %d sources) does not fit a slot", m->id, m->channels,
            m->length, m->sources);
    if (m->slot >= s->slots || (uint32_t)m->count > s->slots - m->slot)
        BAD("batch %u: slots [%u, %u + %d) out of range (%u slots)", m->id, m->slot, m->slot,
            m->count, s->slots);
    return 0;
#undef BAD
}
