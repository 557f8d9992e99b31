/*
 * engine.c - a model prepared on one backend (engine.h).
 *
 * Creating an engine builds each network of the bag a second time, against tensors
 * made resident on the backend (in place for the CPU, copied for a GPU), and gives
 * each network its own runtime (workspace arena, cached tables). A forward pass
 * moves the mix to the backend (nothing to do for host-memory backends), runs the
 * graph in batches of at most max_batch and moves the sources back.
 */
#include <stdlib.h>
#include <string.h>

#include "models/backend.h"
#include "models/htdemucs.h"
#include "models/model_internal.h"
#include "models/profile.h"

struct sep_engine {
    const sep_model *model;
    sep_backend *be;
    int max_batch;
    htd_net net[SEP_MAX_BAG];
    htd_runtime *rt[SEP_MAX_BAG];
    const float **resident; /* weights made resident, released at free */
    int n_resident, cap_resident;
    float *dev_mix, *dev_out; /* staging for backends with their own memory */
    size_t dev_mix_count, dev_out_count;
    float *trace_host;
    size_t trace_host_count;
};

typedef struct {
    sep_engine *e;
    int index;
} device_binding;

/* A backend whose operations can fail reports the first failure (backend.h). */
static int backend_failed(sep_engine *e, char *err, size_t errlen)
{
    char why[400];
    if (!e->be->ops->status || e->be->ops->status(e->be, why, sizeof(why)) == 0)
        return 0;
    snprintf(err, errlen, "%s backend: %s", e->be->name, why);
    return 1;
}

static const float *device_tensor(void *ud, const char *name, int ndim, const int *shape, char *err,
                                  size_t errlen)
{
    device_binding *db = ud;
    sep_engine *e = db->e;
    const st_tensor *t = sep_model_tensor(e->model, db->index, name, ndim, shape, err, errlen);
    if (!t)
        return NULL;
    if (e->n_resident == e->cap_resident) {
        int cap = e->cap_resident ? 2 * e->cap_resident : 256;
        const float **n = realloc(e->resident, (size_t)cap * sizeof(*n));
        if (!n) {
            snprintf(err, errlen, "out of memory");
            return NULL;
        }
        e->resident = n;
        e->cap_resident = cap;
    }
    const float *dev = e->be->ops->weights(e->be, t->data, t->count);
    if (!dev) {
        snprintf(err, errlen, "out of %s memory for tensor %d.%s", e->be->name, db->index, name);
        return NULL;
    }
    e->resident[e->n_resident++] = dev;
    return dev;
}

sep_engine *sep_engine_create(const sep_model *m, const sep_engine_opts *opts, char *err,
                              size_t errlen)
{
    sep_engine_opts o = {0};
    if (opts)
        o = *opts;
    sep_engine *e = calloc(1, sizeof(*e));
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    e->model = m;
    e->max_batch = o.max_batch > 0 ? o.max_batch : 1;
    const char *device = o.device ? o.device : "cpu";
    if (strcmp(device, "cpu") == 0) {
        e->be = sep_cpu_backend_create(o.threads, err, errlen);
    } else if (strncmp(device, "cuda", 4) == 0) {
        int index = device[4] == ':' ? atoi(device + 5) : 0;
        e->be = sep_cuda_backend_open(index, err, errlen);
    } else {
        snprintf(err, errlen, "unknown device \"%s\" (cpu or cuda)", device);
    }
    if (!e->be) {
        free(e);
        return NULL;
    }
    const char *prof = getenv("SEP_PROFILE");
    if (prof && *prof && strcmp(prof, "0") != 0)
        e->be = sep_profile_wrap(e->be);
    for (int i = 0; i < m->info.n_models; i++) {
        device_binding db = {e, i};
        char sub[400];
        if (htd_build(&e->net[i], &m->net[i].hp, m->info.segment_samples, device_tensor, &db, sub,
                      sizeof(sub))) {
            snprintf(err, errlen, "network %d: %s", i, sub);
            sep_engine_free(e);
            return NULL;
        }
        e->rt[i] = htd_runtime_create(&e->net[i], e->be, err, errlen);
        if (!e->rt[i]) {
            sep_engine_free(e);
            return NULL;
        }
    }
    if (backend_failed(e, err, errlen)) {
        sep_engine_free(e);
        return NULL;
    }
    return e;
}

static float *staging(sep_engine *e, float **buf, size_t *have, size_t count)
{
    if (*have >= count)
        return *buf;
    if (*buf)
        e->be->ops->free(e->be, *buf);
    *buf = e->be->ops->alloc(e->be, count * sizeof(float));
    *have = *buf ? count : 0;
    return *buf;
}

typedef struct {
    sep_engine *e;
    sep_trace_fn fn;
    void *ud;
} trace_relay;

/* Moves a traced activation to host memory for the caller's trace function. */
static void relay_trace(void *ud, const char *name, const float *dev, int ndim, const int *shape)
{
    trace_relay *r = ud;
    size_t count = 1;
    for (int i = 0; i < ndim; i++)
        count *= (size_t)shape[i];
    if (r->e->be->host_memory) {
        r->fn(r->ud, name, dev, ndim, shape);
        return;
    }
    if (r->e->trace_host_count < count) {
        free(r->e->trace_host);
        r->e->trace_host = malloc(count * sizeof(float));
        r->e->trace_host_count = r->e->trace_host ? count : 0;
        if (!r->e->trace_host)
            return;
    }
    r->e->be->ops->download(r->e->be, r->e->trace_host, dev, count * sizeof(float));
    r->fn(r->ud, name, r->e->trace_host, ndim, shape);
}

int sep_engine_forward_traced(sep_engine *e, int model_index, const float *mix, int batch,
                              int length, float *out, sep_trace_fn trace, void *trace_ud, char *err,
                              size_t errlen)
{
    const sep_model_info *info = &e->model->info;
    if (model_index < 0 || model_index >= info->n_models) {
        snprintf(err, errlen, "model index %d out of range (bag of %d)", model_index,
                 info->n_models);
        return -1;
    }
    size_t in_per = (size_t)info->audio_channels * length;
    size_t out_per = (size_t)info->n_sources * in_per;
    trace_relay relay = {e, trace, trace_ud};
    for (int b0 = 0; b0 < batch; b0 += e->max_batch) {
        int nb = batch - b0 < e->max_batch ? batch - b0 : e->max_batch;
        const float *hmix = mix + (size_t)b0 * in_per;
        float *hout = out + (size_t)b0 * out_per;
        const float *dmix = hmix;
        float *dout = hout;
        if (!e->be->host_memory) {
            float *m = staging(e, &e->dev_mix, &e->dev_mix_count, nb * in_per);
            dout = staging(e, &e->dev_out, &e->dev_out_count, nb * out_per);
            if (!m || !dout) {
                snprintf(err, errlen, "out of %s memory for a batch of %d", e->be->name, nb);
                return -1;
            }
            e->be->ops->upload(e->be, m, hmix, nb * in_per * sizeof(float));
            dmix = m;
        }
        if (htd_forward(e->rt[model_index], dmix, nb, length, dout, trace ? relay_trace : NULL,
                        &relay, err, errlen)) {
            backend_failed(e, err, errlen); /* the backend's own failure, when it has one */
            return -1;
        }
        if (!e->be->host_memory)
            e->be->ops->download(e->be, hout, dout, nb * out_per * sizeof(float));
        if (backend_failed(e, err, errlen))
            return -1;
    }
    return 0;
}

int sep_engine_forward(sep_engine *e, int model_index, const float *mix, int batch, int length,
                       float *out, char *err, size_t errlen)
{
    return sep_engine_forward_traced(e, model_index, mix, batch, length, out, NULL, NULL, err,
                                     errlen);
}

const char *sep_engine_device(const sep_engine *e)
{
    return e->be->name;
}

size_t sep_engine_workspace_bytes(const sep_engine *e)
{
    size_t total = 0;
    for (int i = 0; i < e->model->info.n_models; i++)
        if (e->rt[i])
            total += htd_runtime_workspace_bytes(e->rt[i]);
    return total;
}

void sep_engine_free(sep_engine *e)
{
    if (!e)
        return;
    for (int i = 0; i < SEP_MAX_BAG; i++)
        htd_runtime_free(e->rt[i]);
    if (e->be) {
        for (int i = 0; i < e->n_resident; i++)
            e->be->ops->weights_free(e->be, e->resident[i]);
        if (e->dev_mix)
            e->be->ops->free(e->be, e->dev_mix);
        if (e->dev_out)
            e->be->ops->free(e->be, e->dev_out);
        e->be->ops->destroy(e->be);
    }
    free(e->resident);
    free(e->trace_host);
    free(e);
}
