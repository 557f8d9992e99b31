/*
 * separate.c - decode -> apply -> encode for one track (see separate.h).
 *
 * The apply layer reads the decoded spool with pread() and hands finished regions to
 * the stem spool as soon as they are final, so the resident memory is the engine's
 * batch buffers plus the apply ring, whatever the track length.
 */
#include "workerd/separate.h"
#include "models/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct {
    sep_decoded *in;
    sep_stem_spool *out;
    sep_stage_progress_fn progress;
    void *user;
} pipeline;

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

static int read_cb(void *user, int64_t start, int count, float *dst)
{
    pipeline *p = user;
    return sep_decoded_read(p->in, start, count, dst);
}

static int write_cb(void *user, int64_t start, int count, const float *src)
{
    pipeline *p = user;
    (void)start; /* regions arrive in order */
    return sep_stem_spool_append(p->out, count, src);
}

static int apply_progress_cb(void *user, double fraction)
{
    pipeline *p = user;
    return p->progress ? p->progress(p->user, "separate", fraction) : 0;
}

static int decode_progress_cb(void *user, double fraction)
{
    pipeline *p = user;
    return p->progress ? p->progress(p->user, "decode", fraction) : 0;
}

int sep_separate_file(sep_engine *e, const sep_model *m, const char *in_path, const char *out_dir,
                      const char *tmp_dir, const sep_separate_opts *o,
                      sep_stage_progress_fn progress, void *user, sep_separate_result *res,
                      char *err, size_t errlen)
{
    const sep_model_info *info = sep_model_get_info(m);
    sep_decoded in;
    sep_stem_spool out;
    pipeline p = {.in = &in, .out = &out, .progress = progress, .user = user};
    memset(res, 0, sizeof(*res));
    memset(&out, 0, sizeof(out));
    for (int i = 0; i < SEP_STEMS_MAX; i++)
        out.fds[i] = -1;

    if (sep_apply_check(m, &o->apply, err, errlen))
        return -1;
    double t0 = sep_wall_seconds();
    if (sep_audio_decode(in_path, info->samplerate, info->audio_channels, tmp_dir, &in,
                         decode_progress_cb, &p, err, errlen))
        return -1;
    res->src_samplerate = in.src_samplerate;
    res->src_channels = in.src_channels;
    snprintf(res->src_format, sizeof(res->src_format), "%s", in.src_format);
    res->frames = in.frames;
    res->audio_seconds = (double)in.frames / info->samplerate;
    res->n_stems = sep_apply_stems(m, &o->apply, res->stems);
    double t1 = sep_wall_seconds();
    res->decode_s = t1 - t0;

    int rc = -1;
    if (sep_mkdirs(out_dir) != 0) {
        snprintf(err, errlen, "cannot create '%s': %s", out_dir, strerror(errno));
        goto done;
    }
    if (sep_stem_spool_open(&out, res->n_stems, info->audio_channels, info->samplerate, tmp_dir,
                            err, errlen))
        goto done;
    sep_apply_io io = {.frames = in.frames,
                       .channels = info->audio_channels,
                       .read = read_cb,
                       .write = write_cb,
                       .progress = apply_progress_cb,
                       .user = &p};
    if (sep_apply_run(e, m, &o->apply, &io, err, errlen))
        goto done;
    double t2 = sep_wall_seconds();
    res->separate_s = t2 - t1;
    if (progress && progress(user, "encode", 0.0)) {
        snprintf(err, errlen, "canceled");
        goto done;
    }
    if (sep_stem_spool_finish(&out, out_dir, res->stems, o->format, o->clip, res->bytes, err,
                              errlen))
        goto done;
    res->encode_s = sep_wall_seconds() - t2;
    if (progress)
        progress(user, "encode", 1.0);
    rc = 0;
done:
    sep_stem_spool_close(&out);
    sep_decoded_close(&in);
    return rc;
}
