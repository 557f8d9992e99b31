/*
 * engine.h - the backend-neutral separation engine API.
 *
 * Three layers, each usable on its own:
 *
 *   sep_model   weights + hyperparameters of one weights file: a single HTDemucs
 *               network or a bag of them (htdemucs_ft), mmap'd from .safetensors
 *               (format: models/FORMAT.md). Pure data; knows no device.
 *   sep_engine  a model prepared on one backend ("cpu" today, "cuda" in cuda/),
 *               running batches of fixed-length segments through one network of
 *               the bag: mix [batch][channels][length] -> [batch][sources][channels][length].
 *   sep_apply   (apply.h) the demucs.apply.apply_model logic on top of an engine:
 *               normalisation, overlapping segments, shifts, bag weighting, two-stem
 *               mode; streams a track of any length through bounded memory.
 *
 * The engine knows nothing of the service: no Redis, no nginx, no shm. Errors are
 * returned as a negative value plus a human message in the caller's buffer.
 */
#ifndef SEP_MODELS_ENGINE_H
#define SEP_MODELS_ENGINE_H

#include <stddef.h>
#include <stdio.h>

#define SEP_MAX_SOURCES 8
#define SEP_MAX_BAG 8
#define SEP_NAME_MAX 64
#define SEP_SOURCE_NAME_MAX 31            /* source names: [A-Za-z0-9_-]{1,31} */
#define SEP_MAX_SEGMENT_SAMPLES (1 << 24) /* metadata segment_samples cap */

typedef struct sep_model sep_model;
typedef struct sep_engine sep_engine;

typedef struct {
    char name[SEP_NAME_MAX]; /* "htdemucs", "htdemucs_6s", "htdemucs_ft", or the file's */
    int n_sources;
    char sources[SEP_MAX_SOURCES][32]; /* e.g. drums, bass, other, vocals */
    int samplerate;                    /* 44100 */
    int audio_channels;                /* 2 */
    int segment_samples;               /* samples per forward pass (training length) */
    double segment_seconds;            /* the model's segment, e.g. 7.8 */
    int n_models;                      /* 1, or the bag size */
    /* bag_weights[m][s]: weight of model m for source s (all 1 for a single model) */
    float bag_weights[SEP_MAX_BAG][SEP_MAX_SOURCES];
} sep_model_info;

/* Loads a .safetensors weights file (see models/FORMAT.md). Any missing tensor or
 * shape mismatch fails with a message naming the tensor; metadata and
 * hyperparameters outside the rules of models/FORMAT.md ("Validation") fail naming
 * the field, its value and the rule. */
sep_model *sep_model_load(const char *path, char *err, size_t errlen);
const sep_model_info *sep_model_get_info(const sep_model *m);
/* 0 when `name` is a valid source name ([A-Za-z0-9_-]{1,31}), else -1 with
 * 'source name "NAME": must match [A-Za-z0-9_-]{1,31}' in err. */
int sep_check_source_name(const char *name, char *err, size_t errlen);
/* Index of a source by name, or -1. */
int sep_model_source_index(const sep_model *m, const char *name);
/* Prints the file's metadata and each network's hyperparameters. */
void sep_model_print(const sep_model *m, FILE *out);
/* Number of parameters of network `model_index`. */
size_t sep_model_param_count(const sep_model *m, int model_index);
void sep_model_free(sep_model *m);

typedef struct {
    const char *device; /* "cpu" (default) or "cuda" */
    int threads;        /* CPU threads (0 = all cores) */
    int max_batch;      /* largest batch passed to sep_engine_forward (0 = 1) */
} sep_engine_opts;

/* Prepares every network of the model's bag on the chosen backend. */
sep_engine *sep_engine_create(const sep_model *m, const sep_engine_opts *opts, char *err,
                              size_t errlen);

/* Runs network `model_index` of the bag on `batch` segments. An engine runs one
 * forward pass at a time (not reentrant: use one engine per thread).
 *   mix: [batch][audio_channels][length] floats (host memory)
 *   out: [batch][n_sources][audio_channels][length] floats (host memory)
 * `length` is the model's segment_samples for HTDemucs (the apply layer pads chunks
 * to it). Returns 0, or -1 with a message in err. */
int sep_engine_forward(sep_engine *e, int model_index, const float *mix, int batch, int length,
                       float *out, char *err, size_t errlen);

/* Receives named intermediate activations of a forward pass in host memory (the
 * names of tests/reference/make_fixtures.py); for parity tests and debugging. */
typedef void (*sep_trace_fn)(void *ud, const char *name, const float *data, int ndim,
                             const int *shape);
/* sep_engine_forward that also reports the intermediate activations to `trace`. */
int sep_engine_forward_traced(sep_engine *e, int model_index, const float *mix, int batch,
                              int length, float *out, sep_trace_fn trace, void *trace_ud, char *err,
                              size_t errlen);

const char *sep_engine_device(const sep_engine *e);
/* Bytes of activation workspace the engine holds (grows to the largest batch run). */
size_t sep_engine_workspace_bytes(const sep_engine *e);
void sep_engine_free(sep_engine *e);

#endif
