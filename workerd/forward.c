/*
 * forward.c - the in-process forwarder over one sep_engine (see forward.h), and the
 * texts of the forwarder codes.
 */
#include "workerd/forward.h"

#include <string.h>

#include "models/util.h"

const char *sep_forward_strerror(int code)
{
    switch (code) {
    case SEP_FWD_OK:
        return "ok";
    case SEP_FWD_EMODEL:
        return "model unavailable";
    case SEP_FWD_ECRASH:
        return "worker crashed";
    case SEP_FWD_ETIME:
        return "deadline passed";
    case SEP_FWD_EDEVICE:
        return "device error";
    case SEP_FWD_ESTOPPED:
        return "stopped";
    case SEP_FWD_EINVAL:
        return "invalid arguments";
    default:
        return "unknown error";
    }
}

void sep_engine_forwarder_init(sep_engine_forwarder *f, sep_engine *e, const sep_model *m,
                               const char *name, int max_batch)
{
    memset(f, 0, sizeof(*f));
    f->engine = e;
    f->model = m;
    f->name = name;
    f->max_batch = max_batch > 0 ? max_batch : 1;
    pthread_mutex_init(&f->lock, NULL);
}

void sep_engine_forwarder_destroy(sep_engine_forwarder *f)
{
    pthread_mutex_destroy(&f->lock);
}

int sep_engine_forward_fn(void *ctx, const char *model, int model_index, const float *in, int n,
                          int length, float *out, double deadline, char *err, size_t errlen)
{
    sep_engine_forwarder *f = ctx;
    if (!f || !f->engine || !f->model || !in || !out || n < 1) {
        sep_set_err(err, errlen, "forward: invalid arguments");
        return SEP_FWD_EINVAL;
    }
    const sep_model_info *info = sep_model_get_info(f->model);
    if (f->name && model && strcmp(model, f->name) != 0) {
        sep_set_err(err, errlen, "model '%s' is not loaded here (this engine runs '%s')", model,
                    f->name);
        return SEP_FWD_EMODEL;
    }
    if (model_index < 0 || model_index >= info->n_models || length != info->segment_samples) {
        sep_set_err(err, errlen, "forward: network %d of %d, segment length %d (the model's is %d)",
                    model_index, info->n_models, length, info->segment_samples);
        return SEP_FWD_EINVAL;
    }
    size_t in_stride = (size_t)info->audio_channels * length;
    size_t out_stride = in_stride * info->n_sources;
    int rc = SEP_FWD_OK;
    pthread_mutex_lock(&f->lock);
    for (int done = 0; done < n;) {
        int k = n - done < f->max_batch ? n - done : f->max_batch;
        if (deadline > 0 && sep_wall_seconds() > deadline) {
            sep_set_err(err, errlen, "the deadline passed before the forward pass started");
            rc = SEP_FWD_ETIME;
            break;
        }
        if (sep_engine_forward(f->engine, model_index, in + done * in_stride, k, length,
                               out + done * out_stride, err, errlen)) {
            rc = SEP_FWD_EDEVICE;
            break;
        }
        done += k;
        f->segments += (uint64_t)k;
    }
    f->calls++;
    pthread_mutex_unlock(&f->lock);
    return rc;
}
