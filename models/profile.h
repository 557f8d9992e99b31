/*
 * profile.h - per-operation timing of a backend (see profile.c). Enabled in the
 * engine by the SEP_PROFILE environment variable; the table goes to stderr when the
 * engine is freed.
 */
#ifndef SEP_MODELS_PROFILE_H
#define SEP_MODELS_PROFILE_H

#include <stdio.h>

#include "models/backend.h"

/* A backend timing every operation of `inner` (which it owns from now on). */
sep_backend *sep_profile_wrap(sep_backend *inner);
void sep_profile_report(sep_backend *be, FILE *out);

#endif
