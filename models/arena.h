/*
 * arena.h - workspace allocator for activations on a backend.
 *
 * The forward pass allocates and frees its activations through an arena instead of
 * the backend: the arena carves them out of a few large backend blocks (first fit,
 * 256-byte aligned), so a forward pass makes no backend allocations once warm. When
 * a pass needs more than the blocks hold, a new block is added; arena_compact()
 * (called between passes) replaces several blocks by one block of their total size,
 * so the steady state is one block sized to the peak the pass needs.
 */
#ifndef SEP_MODELS_ARENA_H
#define SEP_MODELS_ARENA_H

#include <stddef.h>

#include "models/backend.h"

typedef struct arena arena;

arena *arena_create(sep_backend *be);
void arena_destroy(arena *a);
/* count floats; NULL when the backend is out of memory. */
float *arena_alloc(arena *a, size_t count);
void arena_free(arena *a, const float *p);
/* Frees every live allocation (the end of a pass, or a pass abandoned on error). */
void arena_reset(arena *a);
/* Between passes (nothing allocated): merge blocks into one. 0, or -1 on failure. */
int arena_compact(arena *a);
size_t arena_capacity(const arena *a); /* bytes held from the backend */
size_t arena_peak(const arena *a);     /* largest bytes in use at once so far */

#endif
