/*
 * sep_ring.h - the shared-memory region between the workerd supervisor and one device
 * worker process: two single-producer/single-consumer rings of fixed-size messages
 * plus a PCM arena.
 *
 * Region (one memfd, created by the supervisor, inherited by the worker across
 * fork + exec, mapped MAP_SHARED by both):
 *
 *   header      magic, version, geometry (ring capacities, slots, slot sizes, offsets)
 *   cmd ring    supervisor -> worker (BATCH, STOP); producer = supervisor
 *   evt ring    worker -> supervisor (READY, DONE); producer = worker
 *   in arena    slots x slot_in_floats   segment inputs  [channels][length]
 *   out arena   slots x slot_out_floats  segment outputs [sources][channels][length]
 *
 * Ring: a power-of-two array of sep_msg with free-running 32-bit head (consumer) and
 * tail (producer) indices, each on its own cache line (alignas 64) so the two sides
 * never write the same line. The producer writes the message, then publishes it with
 * a release store of tail; the consumer reads tail with acquire, copies the message
 * out, then frees the cell with a release store of head. Capacity is cap messages
 * (tail - head <= cap).
 *
 * Wakeups: each ring has an eventfd. The consumer never spins: when it finds the ring
 * empty it sleeps in poll() on the eventfd. The producer writes the eventfd only when
 * the ring was empty before its push (head == old tail), i.e. only when the consumer
 * may be asleep. The lost-wakeup race (producer: store tail, load head; consumer:
 * store head, load tail) is closed by a seq_cst fence between the store and the load
 * on both sides, so at least one side sees the other's store: either the producer
 * sees the ring empty and signals, or the consumer's re-check sees the new message.
 * A spurious wakeup only costs one empty pop.
 *
 * Trust: the consumer validates what it reads from the shared memory. A ring whose
 * indices are inconsistent (tail - head > cap) is reported as corrupt, and a message
 * is checked with sep_msg_validate() before use: known type, batch count within
 * [1, SEP_RING_MAX_BATCH], the slot range [slot, slot + count) within the arena, the
 * segment (channels x length in, sources x channels x length out) within a slot,
 * strings NUL-terminated, the model name a plain file stem. The worker never trusts a slot
 * index or length beyond those bounds; the supervisor never trusts the worker's.
 *
 * Protocol (workerd/device_worker.c, workerd/pool.c):
 *   worker  -> READY {pid}                               once after attaching
 *   sup     -> BATCH {id, model, model_index, length, channels, sources, slot, count}
 *   worker  -> DONE  {id, status, text}                   one per BATCH, in order
 *   sup     -> STOP                                       worker exits 0
 * A BATCH uses the consecutive slots [slot, slot + count) and packs its segments in
 * them without gaps: segment i's input is at in(slot) + i x channels x length floats
 * and its output at out(slot) + i x sources x channels x length, so the batch is one
 * contiguous [count][channels][length] array the engine reads in place (and one
 * [count][sources][channels][length] array it writes), with no copy in the worker.
 * The supervisor keeps at most a few BATCHes in flight per worker and never reuses a
 * slot before its DONE, so neither ring can fill in that protocol (a full ring is
 * still reported, never overwritten). After a worker dies the supervisor resets both
 * rings (sep_shm_reset) before a new worker attaches to the same region.
 *
 * This file includes nothing from other project folders.
 */
#ifndef SEP_SHARED_RING_H
#define SEP_SHARED_RING_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define SEP_RING_MAGIC 0x53455052494e4731ull /* "SEPRING1" */
#define SEP_RING_VERSION 1
#define SEP_RING_MAX_BATCH 64
#define SEP_RING_MODEL_MAX 64
#define SEP_RING_TEXT_MAX 256

enum {
    SEP_MSG_BATCH = 1, /* cmd: run count segments */
    SEP_MSG_STOP = 2,  /* cmd: exit cleanly */
    SEP_MSG_READY = 3, /* evt: the worker is attached and serving */
    SEP_MSG_DONE = 4   /* evt: the BATCH with the same id finished (status) */
};

/* DONE status */
enum {
    SEP_MSG_OK = 0,
    SEP_MSG_EMODEL = 1,  /* model file missing/unloadable, index out of range */
    SEP_MSG_EDEVICE = 2, /* device init failed, out of (device) memory, forward failed */
    SEP_MSG_EINVAL = 3   /* the message failed validation */
};

typedef struct {
    uint32_t type;
    uint32_t id;                    /* BATCH id, echoed by its DONE */
    int32_t status;                 /* DONE: SEP_MSG_OK or an error */
    int32_t model_index;            /* BATCH: network of the bag */
    int32_t length;                 /* BATCH: samples per segment */
    int32_t channels;               /* BATCH: audio channels of the model */
    int32_t sources;                /* BATCH: sources of the model */
    int32_t count;                  /* BATCH: segments */
    int32_t pid;                    /* READY: the worker's pid */
    uint32_t slot;                  /* BATCH: first slot of the range [slot, slot + count) */
    char model[SEP_RING_MODEL_MAX]; /* BATCH: model name (file stem) */
    char text[SEP_RING_TEXT_MAX];   /* DONE/READY: human message (errors, device) */
    char pad[512 - 40 - SEP_RING_MODEL_MAX - SEP_RING_TEXT_MAX];
} sep_msg;

_Static_assert(sizeof(sep_msg) == 512, "sep_msg is one fixed 512-byte cell");

/* Shared indices of one ring (lives in the region). */
typedef struct {
    alignas(64) _Atomic uint32_t head; /* next cell to read; written by the consumer */
    alignas(64) _Atomic uint32_t tail; /* next cell to write; written by the producer */
} sep_ring_ctl;

/* Header at offset 0 of the region. */
typedef struct {
    uint64_t magic;
    uint32_t version, msg_size;
    uint32_t ring_cap, slots;
    uint64_t slot_in_floats, slot_out_floats;
    uint64_t cmd_off, evt_off, in_off, out_off, total;
} sep_shm_hdr;

enum { SEP_RING_CMD = 0, SEP_RING_EVT = 1 };

/* One process's view of a ring: pointers into the region plus a private copy of the
 * geometry (validated once, never re-read from the shared memory). */
typedef struct {
    sep_ring_ctl *ctl;
    sep_msg *cells;
    uint32_t cap; /* power of two */
    int efd;      /* eventfd: "the ring became non-empty" */
} sep_ring;

typedef struct {
    void *base;
    size_t size;
    int memfd;
    sep_ring ring[2]; /* SEP_RING_CMD, SEP_RING_EVT */
    float *in, *out;
    uint32_t slots;
    size_t slot_in_floats, slot_out_floats;
} sep_shm;

/* Creates a region: memfd + two eventfds (all close-on-exec; the spawner moves them to
 * the child), rings of ring_cap messages (rounded up to a power of two, >= 2), `slots`
 * arena slots of the given sizes in floats. 0, or -1 with a message. */
int sep_shm_create(sep_shm *s, uint32_t ring_cap, uint32_t slots, size_t slot_in_floats,
                   size_t slot_out_floats, char *err, size_t errlen);
/* Maps a region created by another process from its memfd and the two eventfds
 * (ownership of the fds passes to s). Validates the header against the memfd's
 * size. 0, or -1 with a message. */
int sep_shm_attach(sep_shm *s, int memfd, int cmd_efd, int evt_efd, char *err, size_t errlen);
/* Unmaps and closes every fd. Safe on a zeroed or half-made sep_shm. */
void sep_shm_close(sep_shm *s);
/* Empties both rings and clears both eventfds. Only when no other process has the
 * region attached (the supervisor after its worker died). */
void sep_shm_reset(sep_shm *s);

/* Input and output buffers of a slot (slot < s->slots). */
float *sep_shm_in(const sep_shm *s, uint32_t slot);
float *sep_shm_out(const sep_shm *s, uint32_t slot);

/* Producer side: copies m into the ring. 0; -1 when full (nothing written). Writes
 * the ring's eventfd when the ring was empty before the push. */
int sep_ring_push(sep_shm *s, int which, const sep_msg *m);
/* Consumer side: 1 and *m filled; 0 when empty; -1 when the shared indices are
 * inconsistent (corrupt ring). Does not validate the message (sep_msg_validate). */
int sep_ring_pop(sep_shm *s, int which, sep_msg *m);
/* Messages currently in the ring (as the caller sees it). */
uint32_t sep_ring_count(sep_shm *s, int which);
/* The eventfd to poll (POLLIN) for "ring may be non-empty". */
int sep_ring_fd(const sep_shm *s, int which);
/* Clears a wakeup (non-blocking read of the eventfd). */
void sep_ring_clear(sep_shm *s, int which);
/* Consumer side: pops one message, sleeping on the eventfd while the ring is empty,
 * for at most timeout_ms (-1 = forever). 1 popped, 0 timeout/EINTR, -1 corrupt. */
int sep_ring_wait_pop(sep_shm *s, int which, sep_msg *m, int timeout_ms);

/* Checks a message read from a ring against the region's geometry (see the top of
 * this file). 0, or -1 with a message naming the bad field. */
int sep_msg_validate(const sep_shm *s, const sep_msg *m, char *err, size_t errlen);

#endif
