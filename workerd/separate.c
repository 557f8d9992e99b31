/*
 * separate.c - sep_separate_file (see separate.h): the offline CLI's entry, a job run
 * by the job runner (jobexec.h) on an in-process forwarder over the caller's engine,
 * so `workerd separate` and the daemon share one decode -> apply -> encode path.
 */
#include "workerd/separate.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "models/util.h"
#include "workerd/forward.h"
#include "workerd/jobexec.h"

int sep_mkdirs(const char *path)
{
    char buf[4096];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof(buf)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(buf, path, len + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return -1;
    struct stat st;
    if (stat(buf, &st) != 0)
        return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

int sep_separate_file(sep_engine *e, const sep_model *m, const char *in_path, const char *out_dir,
                      const char *tmp_dir, const sep_separate_opts *o,
                      sep_stage_progress_fn progress, void *user, sep_separate_result *res,
                      char *err, size_t errlen)
{
    const sep_model_info *info = sep_model_get_info(m);
    memset(res, 0, sizeof(*res));
    if (o->apply.shift_offsets || o->apply.transition_power != 1.0) {
        sep_set_err(err, errlen, "explicit shift offsets and transition_power are not supported");
        return -1;
    }
    sep_engine_forwarder fwd;
    sep_engine_forwarder_init(&fwd, e, m, NULL, o->apply.max_batch);

    sep_job_spec spec;
    sep_job_spec_init(&spec);
    spec.forward = sep_engine_forward_fn;
    spec.forward_ctx = &fwd;
    spec.model = m;
    spec.model_name = info->name;
    spec.input_path = in_path;
    spec.output_dir = out_dir;
    spec.tmp_dir = tmp_dir;
    spec.stems = o->apply.two_stems >= 0 && o->apply.two_stems < info->n_sources
                     ? info->sources[o->apply.two_stems]
                     : NULL;
    spec.format = o->format;
    spec.clip = o->clip;
    spec.shifts = o->apply.shifts;
    spec.overlap = o->apply.overlap;
    spec.segment = o->apply.segment;
    spec.seed = o->apply.seed;
    spec.max_batch = o->apply.max_batch > 0 ? o->apply.max_batch : 1;
    spec.progress = progress;
    spec.user = user;
    spec.progress_interval = 0; /* the caller throttles its own display */

    sep_job_outcome out;
    int rc = sep_job_execute(&spec, &out);
    sep_engine_forwarder_destroy(&fwd);

    res->src_samplerate = out.src_samplerate;
    res->src_channels = out.src_channels;
    snprintf(res->src_format, sizeof(res->src_format), "%s", out.src_format);
    res->frames = out.frames;
    res->audio_seconds = info->samplerate > 0 ? (double)out.frames / info->samplerate : 0;
    res->decode_s = out.decode_s;
    res->separate_s = out.separate_s;
    res->encode_s = out.encode_s;
    res->n_stems = out.n_stems;
    for (int i = 0; i < out.n_stems && i < SEP_MAX_SOURCES; i++) {
        snprintf(res->stems[i], sizeof(res->stems[i]), "%s", out.stems[i].name);
        res->bytes[i] = out.stems[i].bytes;
    }
    res->code = out.code;
    if (rc)
        sep_set_err(err, errlen, "%s", out.message);
    return rc ? -1 : 0;
}
