/*
 * arena.c - first-fit workspace allocator over large backend blocks (see arena.h).
 *
 * Each block keeps its live allocations as an array sorted by offset; a forward pass
 * has a few dozen live activations at most, so a linear scan is all it needs. Only
 * host-side bookkeeping: block memory itself is never touched here, so the same
 * code serves host and GPU memory.
 */
#include "models/arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ARENA_ALIGN 256
#define ARENA_MIN_BLOCK (64u << 20)

typedef struct {
    size_t off, size;
} span;

typedef struct {
    char *base;
    size_t size;
    span *live;
    int n_live, cap_live;
} block;

struct arena {
    sep_backend *be;
    block *blocks;
    int n_blocks;
    size_t in_use, peak;
};

arena *arena_create(sep_backend *be)
{
    arena *a = calloc(1, sizeof(*a));
    if (a)
        a->be = be;
    return a;
}

static void block_release(arena *a, block *b)
{
    a->be->ops->free(a->be, b->base);
    free(b->live);
    memset(b, 0, sizeof(*b));
}

void arena_destroy(arena *a)
{
    if (!a)
        return;
    for (int i = 0; i < a->n_blocks; i++)
        block_release(a, &a->blocks[i]);
    free(a->blocks);
    free(a);
}

static int block_insert(block *b, int at, size_t off, size_t size)
{
    if (b->n_live == b->cap_live) {
        int cap = b->cap_live ? b->cap_live * 2 : 32;
        span *n = realloc(b->live, (size_t)cap * sizeof(span));
        if (!n)
            return -1;
        b->live = n;
        b->cap_live = cap;
    }
    memmove(&b->live[at + 1], &b->live[at], (size_t)(b->n_live - at) * sizeof(span));
    b->live[at] = (span){off, size};
    b->n_live++;
    return 0;
}

/* First gap of `size` bytes in the block: index to insert at, offset in *off. */
static int block_fit(const block *b, size_t size, size_t *off)
{
    size_t cur = 0;
    for (int i = 0; i <= b->n_live; i++) {
        size_t end = i < b->n_live ? b->live[i].off : b->size;
        if (end >= cur && end - cur >= size) {
            *off = cur;
            return i;
        }
        if (i < b->n_live)
            cur = b->live[i].off + b->live[i].size;
    }
    return -1;
}

static block *arena_add_block(arena *a, size_t size)
{
    block *n = realloc(a->blocks, (size_t)(a->n_blocks + 1) * sizeof(block));
    if (!n)
        return NULL;
    a->blocks = n;
    block *b = &a->blocks[a->n_blocks];
    memset(b, 0, sizeof(*b));
    b->base = a->be->ops->alloc(a->be, size);
    if (!b->base)
        return NULL;
    b->size = size;
    a->n_blocks++;
    return b;
}

float *arena_alloc(arena *a, size_t count)
{
    size_t size = (count * sizeof(float) + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    if (size == 0)
        size = ARENA_ALIGN;
    for (int i = 0; i < a->n_blocks; i++) {
        size_t off;
        int at = block_fit(&a->blocks[i], size, &off);
        if (at >= 0) {
            if (block_insert(&a->blocks[i], at, off, size))
                return NULL;
            a->in_use += size;
            if (a->in_use > a->peak)
                a->peak = a->in_use;
            return (float *)(a->blocks[i].base + off);
        }
    }
    block *b = arena_add_block(a, size > ARENA_MIN_BLOCK ? size : ARENA_MIN_BLOCK);
    if (!b || block_insert(b, 0, 0, size))
        return NULL;
    a->in_use += size;
    if (a->in_use > a->peak)
        a->peak = a->in_use;
    return (float *)b->base;
}

void arena_free(arena *a, const float *p)
{
    if (!p)
        return;
    const char *c = (const char *)p;
    for (int i = 0; i < a->n_blocks; i++) {
        block *b = &a->blocks[i];
        if (c < b->base || c >= b->base + b->size)
            continue;
        size_t off = (size_t)(c - b->base);
        for (int j = 0; j < b->n_live; j++) {
            if (b->live[j].off == off) {
                a->in_use -= b->live[j].size;
                memmove(&b->live[j], &b->live[j + 1], (size_t)(b->n_live - j - 1) * sizeof(span));
                b->n_live--;
                return;
            }
        }
    }
    abort(); /* freeing something the arena never gave out: a graph bug */
}

void arena_reset(arena *a)
{
    for (int i = 0; i < a->n_blocks; i++)
        a->blocks[i].n_live = 0;
    a->in_use = 0;
}

int arena_compact(arena *a)
{
    if (a->n_blocks <= 1)
        return 0;
    size_t total = 0;
    for (int i = 0; i < a->n_blocks; i++) {
        if (a->blocks[i].n_live)
            return 0; /* not between passes */
        total += a->blocks[i].size;
    }
    for (int i = 0; i < a->n_blocks; i++)
        block_release(a, &a->blocks[i]);
    a->n_blocks = 0;
    return arena_add_block(a, total) ? 0 : -1;
}

size_t arena_capacity(const arena *a)
{
    size_t total = 0;
    for (int i = 0; i < a->n_blocks; i++)
        total += a->blocks[i].size;
    return total;
}

size_t arena_peak(const arena *a)
{
    return a->peak;
}
