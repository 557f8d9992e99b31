/*
 * model_internal.h - what the engine sees of a loaded model (model.c): the mapped
 * file and, per network of the bag, its hyperparameters and host-bound structure.
 */
#ifndef SEP_MODELS_MODEL_INTERNAL_H
#define SEP_MODELS_MODEL_INTERNAL_H

#include "models/engine.h"
#include "models/htdemucs.h"
#include "models/safetensors.h"

struct sep_model {
    st_file file;
    sep_model_info info;
    char signature[SEP_MAX_BAG][64];
    htd_net net[SEP_MAX_BAG]; /* bound to the mapped host tensors */
};

/* The host tensor "{model_index}.{name}" with the given shape, or NULL with a message
 * naming it. Marks the tensor used. */
const st_tensor *sep_model_tensor(const sep_model *m, int model_index, const char *name, int ndim,
                                  const int *shape, char *err, size_t errlen);

#endif
