/*
 * audio.c - decoding (libsndfile + libsoxr) to a float32 spool file, and stem encoding
 * with demucs' clip and sample-conversion semantics. See audio.h.
 */
#include "workerd/audio.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sndfile.h>
#include <soxr.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "models/util.h"
#define DECODE_BLOCK 16384 /* frames per libsndfile read */
#define ENCODE_BLOCK 16384 /* frames per libsndfile write */
/* frames of resampler output per soxr_process call, whatever the ratio: the input
 * block is fed in as many calls as its output needs (a 1 Hz file upsampled to
 * 44.1 kHz does not get a 44100x output buffer) */
#define RESAMPLE_BLOCK 16384

/* An unnamed file in dir: O_TMPFILE where the filesystem has it, else mkstemp + unlink. */
static int open_anonymous(const char *dir)
{
#ifdef O_TMPFILE
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0)
        return fd;
#endif
    char path[4096];
    if (snprintf(path, sizeof(path), "%s/.sep-spool-XXXXXX", dir) >= (int)sizeof(path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int tfd = mkostemp(path, O_CLOEXEC);
    if (tfd >= 0)
        unlink(path);
    return tfd;
}

static int write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int pread_all(int fd, void *data, size_t len, off_t off)
{
    char *p = data;
    while (len) {
        ssize_t n = pread(fd, p, len, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
        off += n;
    }
    return 0;
}

static int ensure_buf(float **buf, size_t *have, size_t need)
{
    if (*have >= need)
        return 0;
    float *nb = realloc(*buf, need * sizeof(float));
    if (!nb)
        return -1;
    *buf = nb;
    *have = need;
    return 0;
}

/* demucs.audio.convert_audio_channels on interleaved frames. */
static void convert_channels(const float *in, int in_ch, float *out, int out_ch, int frames)
{
    for (int t = 0; t < frames; t++) {
        const float *src = in + (size_t)t * in_ch;
        float *dst = out + (size_t)t * out_ch;
        if (in_ch == out_ch) {
            memcpy(dst, src, sizeof(float) * out_ch);
        } else if (out_ch == 1) {
            float sum = 0;
            for (int c = 0; c < in_ch; c++)
                sum += src[c];
            dst[0] = sum / (float)in_ch;
        } else if (in_ch == 1) {
            for (int c = 0; c < out_ch; c++)
                dst[c] = src[0];
        } else { /* in_ch > out_ch: the first channels */
            memcpy(dst, src, sizeof(float) * out_ch);
        }
    }
}

static void describe_format(SNDFILE *sf, const SF_INFO *info, char *out, size_t outlen)
{
    SF_FORMAT_INFO major = {.format = info->format & SF_FORMAT_TYPEMASK};
    SF_FORMAT_INFO sub = {.format = info->format & SF_FORMAT_SUBMASK};
    const char *mname = "unknown", *sname = "unknown";
    if (sf_command(sf, SFC_GET_FORMAT_INFO, &major, sizeof(major)) == 0)
        mname = major.name;
    if (sf_command(sf, SFC_GET_FORMAT_INFO, &sub, sizeof(sub)) == 0)
        sname = sub.name;
    snprintf(out, outlen, "%s, %s", mname, sname);
}

/* Index of the first NaN/Inf among n samples, or -1. */
static int64_t first_non_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return (int64_t)i;
    return -1;
}

/* A file that ends before its header says it does. libsndfile decodes what is there
 * without an error, so this compares the frames decoded with the announced count and
 * reads libsndfile's parse log (WAV data chunks cut short: "data : N (should be M)",
 * the streaming sentinel sizes 0 and 0xFFFFFFFF aside; Ogg streams without their end and
 * final position).
 * 1 (message set) or 0. */
static int truncated(SNDFILE *sf, const SF_INFO *info, int64_t decoded, char *err, size_t errlen,
                     const char *path)
{
    int major = info->format & SF_FORMAT_TYPEMASK;
    if (info->frames > 0 && info->frames < SF_COUNT_MAX) {
        /* MPEG frame counts without a Xing/LAME header are estimates from the bitrate */
        int64_t need = major == SF_FORMAT_MPEG ? (int64_t)(0.98 * (double)info->frames)
                                               : (int64_t)info->frames;
        if (decoded < need) {
            sep_set_err(err, errlen,
                        "cannot use '%s': the file is truncated or corrupt (%lld of %lld "
                        "frames decoded)",
                        path, (long long)decoded, (long long)info->frames);
            return 1;
        }
    }
    enum { LOG_MAX = 16384 };
    char *tlog = calloc(1, LOG_MAX);
    if (!tlog)
        return 0;
    sf_command(sf, SFC_GET_LOG_INFO, tlog, LOG_MAX);
    const char *why = NULL;
    for (const char *p = tlog; (p = strstr(p, "data : ")) != NULL; p++) {
        unsigned long long said, real;
        if (sscanf(p, "data : %llu (should be %llu)", &said, &real) == 2 && real < said &&
            said != 0xFFFFFFFFULL && said != 0x7FFFFFFFULL && said != 0xFFFFFFFFFFFFFFFFULL) {
            why = "its data chunk is cut short";
            break;
        }
    }
    /* libsndfile's own Ogg files may lack the end-of-stream flag; a cut one has no
     * final granule position either (its length is unknown) */
    if (!why && strstr(tlog, "ended unexpectedly") && info->frames == SF_COUNT_MAX)
        why = "the stream ends unexpectedly";
    free(tlog);
    if (why) {
        sep_set_err(err, errlen, "cannot use '%s': the file is truncated or corrupt (%s)", path,
                    why);
        return 1;
    }
    return 0;
}

int sep_audio_decode(const char *path, int samplerate, int channels, const char *tmp_dir,
                     sep_decoded *out, sep_audio_progress_fn progress, void *user, char *err,
                     size_t errlen)
{
    memset(out, 0, sizeof(*out));
    out->fd = -1;
    out->error = SEP_AUDIO_EINVALID;
    struct stat stbuf;
    if (stat(path, &stbuf) != 0) {
        out->error = errno == ENOENT || errno == ENOTDIR || errno == ENAMETOOLONG || errno == ELOOP
                         ? SEP_AUDIO_EMISSING
                         : SEP_AUDIO_EIO;
        sep_set_err(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        return -1;
    }
    if (S_ISDIR(stbuf.st_mode)) {
        sep_set_err(err, errlen, "cannot open '%s': is a directory", path);
        return -1;
    }
    if (stbuf.st_size == 0) {
        sep_set_err(err, errlen, "cannot decode '%s': the file is empty", path);
        return -1;
    }
    SF_INFO info;
    memset(&info, 0, sizeof(info));
    /* opened here, so that a permission problem is reported as one (libsndfile would
     * call it "not a supported audio file (System error : ...)") */
    int in_fd = open(path, O_RDONLY | O_CLOEXEC);
    if (in_fd < 0) {
        out->error = SEP_AUDIO_EIO;
        sep_set_err(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        return -1;
    }
    SNDFILE *sf = sf_open_fd(in_fd, SFM_READ, &info, SF_TRUE);
    if (!sf) {
        const char *why = sf_strerror(NULL);
        if (strstr(why, "System error")) {
            out->error = SEP_AUDIO_EIO;
            sep_set_err(err, errlen, "cannot read '%s': %s", path, why);
        } else {
            sep_set_err(err, errlen, "cannot decode '%s': not a supported audio file (%s)", path,
                        why);
        }
        return -1;
    }
    if (info.channels < 1 || info.samplerate < 1) {
        sep_set_err(err, errlen, "cannot decode '%s': no audio stream", path);
        sf_close(sf);
        return -1;
    }
    if (info.samplerate < SEP_AUDIO_MIN_RATE) {
        /* resampled to the model's rate, a few bytes at 1 Hz would be hours of audio to
         * separate: an upload could cost 10,000 times its size in work */
        sep_set_err(err, errlen,
                    "cannot use '%s': its sample rate %d Hz is below %d Hz (it would be "
                    "%.0f s of audio per KiB)",
                    path, info.samplerate, SEP_AUDIO_MIN_RATE,
                    1024.0 / ((double)info.samplerate * info.channels * 2));
        sf_close(sf);
        return -1;
    }
    if (info.channels > 1 && info.channels < channels) {
        /* demucs: "The audio file has less channels than requested but is not mono." */
        sep_set_err(err, errlen, "cannot use '%s': it has %d channels, the model needs %d", path,
                    info.channels, channels);
        sf_close(sf);
        return -1;
    }
    out->channels = channels;
    out->samplerate = samplerate;
    out->src_samplerate = info.samplerate;
    out->src_channels = info.channels;
    describe_format(sf, &info, out->src_format, sizeof(out->src_format));

    int rc = -1;
    soxr_t rs = NULL;
    float *raw = malloc(sizeof(float) * DECODE_BLOCK * info.channels);
    float *conv = malloc(sizeof(float) * DECODE_BLOCK * channels);
    size_t rs_cap = RESAMPLE_BLOCK;
    float *res = malloc(sizeof(float) * rs_cap * channels);
    int64_t written = 0;
    if (!raw || !conv || !res) {
        out->error = SEP_AUDIO_EIO;
        sep_set_err(err, errlen, "out of memory");
        goto done;
    }
    out->fd = open_anonymous(tmp_dir);
    if (out->fd < 0) {
        out->error = SEP_AUDIO_EIO;
        sep_set_err(err, errlen, "cannot create a temporary file in '%s': %s", tmp_dir,
                    strerror(errno));
        goto done;
    }
    if (info.samplerate != samplerate) {
        soxr_error_t serr = NULL;
        soxr_io_spec_t io = soxr_io_spec(SOXR_FLOAT32_I, SOXR_FLOAT32_I);
        soxr_quality_spec_t q = soxr_quality_spec(SOXR_HQ, 0);
        rs = soxr_create(info.samplerate, samplerate, (unsigned)channels, &serr, &io, &q, NULL);
        if (!rs || serr) {
            sep_set_err(err, errlen, "cannot create a resampler %d -> %d Hz: %s", info.samplerate,
                        samplerate, serr ? serr : "unknown error");
            goto done;
        }
    }
    int64_t src_frames = 0;
    for (;;) {
        sf_count_t n = sf_readf_float(sf, raw, DECODE_BLOCK);
        if (n < 0 || (n == 0 && sf_error(sf) != SF_ERR_NO_ERROR)) {
            sep_set_err(err, errlen, "cannot decode '%s': %s", path, sf_strerror(sf));
            goto done;
        }
        if (n > 0) {
            int64_t bad = first_non_finite(raw, (size_t)n * info.channels);
            if (bad >= 0) {
                int64_t frame = src_frames + bad / info.channels;
                sep_set_err(err, errlen,
                            "cannot use '%s': non-finite sample (NaN or Inf) at %.3f s "
                            "(frame %lld, channel %d)",
                            path, (double)frame / info.samplerate, (long long)frame,
                            (int)(bad % info.channels) + 1);
                goto done;
            }
            convert_channels(raw, info.channels, conv, channels, (int)n);
        }
        src_frames += n;
        if (!rs) {
            if (n == 0)
                break;
            if (write_all(out->fd, conv, sizeof(float) * channels * (size_t)n)) {
                out->error = SEP_AUDIO_EIO;
                sep_set_err(err, errlen, "writing the decoded audio failed: %s", strerror(errno));
                goto done;
            }
            written += n;
        } else {
            /* n == 0 flushes the resampler (input NULL); loop until it has nothing left. */
            size_t in_left = (size_t)n;
            const float *in = conv;
            for (;;) {
                size_t idone = 0, odone = 0;
                soxr_error_t serr =
                    soxr_process(rs, n ? in : NULL, in_left, &idone, res, rs_cap, &odone);
                if (serr) {
                    out->error = SEP_AUDIO_EIO;
                    sep_set_err(err, errlen, "resampling failed: %s", serr);
                    goto done;
                }
                if (odone && write_all(out->fd, res, sizeof(float) * channels * odone)) {
                    out->error = SEP_AUDIO_EIO;
                    sep_set_err(err, errlen, "writing the decoded audio failed: %s",
                                strerror(errno));
                    goto done;
                }
                written += (int64_t)odone;
                in += idone * channels;
                in_left -= idone;
                if (n ? in_left == 0 && odone < rs_cap : odone == 0)
                    break;
            }
            if (n == 0)
                break;
        }
        /* called for every block, also when the length is unknown (Ogg): it may cancel */
        if (progress && progress(user, info.frames > 0 && info.frames < SF_COUNT_MAX
                                           ? fmin(1.0, (double)src_frames / (double)info.frames)
                                           : 0.0)) {
            out->error = SEP_AUDIO_ECANCELED;
            sep_set_err(err, errlen, "canceled");
            goto done;
        }
    }
    if (src_frames == 0) {
        sep_set_err(err, errlen, "cannot use '%s': it holds no audio frames", path);
        goto done;
    }
    if (truncated(sf, &info, src_frames, err, errlen, path))
        goto done;
    /* julius.resample_frac's default length: floor(frames * to / from). */
    int64_t want = rs ? (int64_t)((__int128)src_frames * samplerate / info.samplerate) : written;
    if (written < want) {
        memset(res, 0, sizeof(float) * channels * rs_cap);
        while (written < want) {
            size_t k = (size_t)(want - written) < rs_cap ? (size_t)(want - written) : rs_cap;
            if (write_all(out->fd, res, sizeof(float) * channels * k)) {
                out->error = SEP_AUDIO_EIO;
                sep_set_err(err, errlen, "writing the decoded audio failed: %s", strerror(errno));
                goto done;
            }
            written += (int64_t)k;
        }
    } else if (written > want && ftruncate(out->fd, (off_t)want * channels * sizeof(float))) {
        out->error = SEP_AUDIO_EIO;
        sep_set_err(err, errlen, "truncating the decoded audio failed: %s", strerror(errno));
        goto done;
    }
    out->frames = want;
    out->src_frames = src_frames;
    out->error = SEP_AUDIO_OK;
    rc = 0;
done:
    if (rs)
        soxr_delete(rs);
    sf_close(sf);
    free(raw);
    free(conv);
    free(res);
    if (rc && out->fd >= 0) {
        close(out->fd);
        out->fd = -1;
    }
    return rc;
}

int sep_decoded_read(sep_decoded *d, int64_t start, int count, float *dst)
{
    if (start < 0 || count < 0 || start + count > d->frames)
        return -1;
    size_t n = (size_t)count * d->channels;
    if (ensure_buf(&d->buf, &d->buf_floats, n))
        return -1;
    if (pread_all(d->fd, d->buf, n * sizeof(float), (off_t)start * d->channels * sizeof(float)))
        return -1;
    for (int c = 0; c < d->channels; c++)
        for (int t = 0; t < count; t++)
            dst[(size_t)c * count + t] = d->buf[(size_t)t * d->channels + c];
    return 0;
}

void sep_decoded_close(sep_decoded *d)
{
    if (d->fd >= 0)
        close(d->fd);
    d->fd = -1;
    free(d->buf);
    d->buf = NULL;
    d->buf_floats = 0;
}

/* ---- encoding -------------------------------------------------------------------- */

const char *sep_out_extension(sep_out_format f)
{
    return f == SEP_OUT_FLAC16 || f == SEP_OUT_FLAC24 ? "flac" : "wav";
}

int sep_stem_spool_open(sep_stem_spool *s, int n_stems, int channels, int samplerate,
                        const char *tmp_dir, char *err, size_t errlen)
{
    memset(s, 0, sizeof(*s));
    for (int i = 0; i < SEP_STEMS_MAX; i++)
        s->fds[i] = -1;
    if (n_stems < 1 || n_stems > SEP_STEMS_MAX) {
        sep_set_err(err, errlen, "unsupported number of stems: %d", n_stems);
        return -1;
    }
    s->n_stems = n_stems;
    s->channels = channels;
    s->samplerate = samplerate;
    for (int i = 0; i < n_stems; i++) {
        s->fds[i] = open_anonymous(tmp_dir);
        if (s->fds[i] < 0) {
            int e = errno;
            sep_stem_spool_close(s);
            s->error = SEP_AUDIO_EIO;
            errno = e;
            sep_set_err(err, errlen, "cannot create a temporary file in '%s': %s", tmp_dir,
                        strerror(errno));
            return -1;
        }
    }
    return 0;
}

int sep_stem_spool_append(sep_stem_spool *s, int count, const float *src)
{
    size_t n = (size_t)count * s->channels;
    if (ensure_buf(&s->buf, &s->buf_floats, n)) {
        s->error = SEP_AUDIO_EIO;
        return -1;
    }
    for (int i = 0; i < s->n_stems; i++) {
        float peak = s->peak[i];
        for (int c = 0; c < s->channels; c++) {
            const float *row = src + ((size_t)i * s->channels + c) * count;
            for (int t = 0; t < count; t++) {
                float v = row[t];
                s->buf[(size_t)t * s->channels + c] = v;
                if (fabsf(v) > peak || isnan(v))
                    peak = isnan(v) ? NAN : fabsf(v);
            }
        }
        s->peak[i] = peak;
        if (write_all(s->fds[i], s->buf, n * sizeof(float))) {
            s->error = SEP_AUDIO_EIO;
            return -1;
        }
    }
    s->frames += count;
    return 0;
}

static float clampf(float v, float lo, float hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* SEP_CLIP_AUTO resolved for a format. */
static sep_clip_mode effective_clip(sep_clip_mode clip, sep_out_format fmt)
{
    if (clip == SEP_CLIP_AUTO)
        return fmt == SEP_OUT_WAVF32 ? SEP_CLIP_NONE : SEP_CLIP_RESCALE;
    return clip;
}

static int encode_stem(sep_stem_spool *s, int stem, const char *path, sep_out_format fmt,
                       sep_clip_mode clip, sep_audio_progress_fn progress, void *user, double frac0,
                       double frac_span, char *err, size_t errlen)
{
    static const int sndfile_format[] = {
        [SEP_OUT_WAV16] = SF_FORMAT_WAV | SF_FORMAT_PCM_16,
        [SEP_OUT_WAV24] = SF_FORMAT_WAV | SF_FORMAT_PCM_24,
        [SEP_OUT_WAVF32] = SF_FORMAT_WAV | SF_FORMAT_FLOAT,
        [SEP_OUT_FLAC16] = SF_FORMAT_FLAC | SF_FORMAT_PCM_16,
        [SEP_OUT_FLAC24] = SF_FORMAT_FLAC | SF_FORMAT_PCM_24,
    };
    SF_INFO info = {.samplerate = s->samplerate, .channels = s->channels};
    if ((unsigned)fmt < sizeof(sndfile_format) / sizeof(sndfile_format[0]))
        info.format = sndfile_format[fmt];
    /* Large WAVs switch to RF64 automatically instead of overflowing the RIFF size. */
    if ((info.format & SF_FORMAT_TYPEMASK) == SF_FORMAT_WAV &&
        s->frames * s->channels * 4 > 0xFFFFFF00LL)
        info.format = SF_FORMAT_RF64 | (info.format & SF_FORMAT_SUBMASK);
    /* a new file, never through a link another process put at the name */
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) {
        s->error = SEP_AUDIO_EIO;
        sep_set_err(err, errlen, "cannot create '%s': %s", path, strerror(errno));
        return -1;
    }
    SNDFILE *sf = sf_open_fd(fd, SFM_WRITE, &info, SF_TRUE);
    if (!sf) {
        close(fd);
        unlink(path);
        s->error = SEP_AUDIO_EIO;
        sep_set_err(err, errlen, "cannot write '%s': %s", path, sf_strerror(NULL));
        return -1;
    }
    sf_command(sf, SFC_SET_ADD_PEAK_CHUNK, NULL, SF_FALSE);

    /* demucs.audio.prevent_clip, then encode_wav's clamp(-1, 1). */
    float peak = s->peak[stem];
    float scale = 1.0f;
    if (clip == SEP_CLIP_RESCALE)
        scale = fmaxf(1.01f * peak, 1.0f);
    size_t n = (size_t)ENCODE_BLOCK * s->channels;
    float *f = malloc(n * sizeof(float));
    int32_t *iv = malloc(n * sizeof(int32_t));
    int16_t *sv = malloc(n * sizeof(int16_t));
    int rc = -1;
    s->error = SEP_AUDIO_EIO;
    if (!f || !iv || !sv) {
        sep_set_err(err, errlen, "out of memory");
        goto done;
    }
    /* float WAV stores what prevent_clip left, beyond +-1 included (torchaudio PCM_F) */
    int is_float = fmt == SEP_OUT_WAVF32;
    for (int64_t pos = 0; pos < s->frames; pos += ENCODE_BLOCK) {
        int count = (int)(s->frames - pos < ENCODE_BLOCK ? s->frames - pos : ENCODE_BLOCK);
        size_t k = (size_t)count * s->channels;
        if (progress && progress(user, frac0 + frac_span * (double)pos / (double)s->frames)) {
            s->error = SEP_AUDIO_ECANCELED;
            sep_set_err(err, errlen, "canceled");
            goto done;
        }
        if (pread_all(s->fds[stem], f, k * sizeof(float),
                      (off_t)pos * s->channels * sizeof(float))) {
            sep_set_err(err, errlen, "reading the stem spool failed: %s", strerror(errno));
            goto done;
        }
        for (size_t i = 0; i < k; i++) {
            float v = f[i];
            if (clip == SEP_CLIP_RESCALE)
                v = v / scale;
            else if (clip == SEP_CLIP_CLAMP)
                v = clampf(v, -0.99f, 0.99f);
            f[i] = is_float ? v : clampf(v, -1.0f, 1.0f);
        }
        sf_count_t wrote;
        switch (fmt) {
        case SEP_OUT_WAV16:
        case SEP_OUT_FLAC16:
            for (size_t i = 0; i < k; i++)
                sv[i] = (int16_t)(f[i] * 32767.0f); /* numpy astype: truncation */
            wrote = sf_writef_short(sf, sv, count);
            break;
        case SEP_OUT_WAV24:
        case SEP_OUT_FLAC24:
            /* libsndfile takes 24-bit samples in the top bits of an int, as demucs packs */
            for (size_t i = 0; i < k; i++)
                iv[i] = (int32_t)((uint32_t)(int32_t)(f[i] * 8388607.0f) << 8);
            wrote = sf_writef_int(sf, iv, count);
            break;
        default:
            wrote = sf_writef_float(sf, f, count);
            break;
        }
        if (wrote != count) {
            sep_set_err(err, errlen, "writing '%s' failed: %s", path, sf_strerror(sf));
            goto done;
        }
    }
    rc = 0;
    s->error = SEP_AUDIO_OK;
done:
    if (sf_close(sf) != 0 && rc == 0) {
        sep_set_err(err, errlen, "closing '%s' failed", path);
        s->error = SEP_AUDIO_EIO;
        rc = -1;
    }
    free(f);
    free(iv);
    free(sv);
    return rc;
}

int sep_stem_spool_finish(sep_stem_spool *s, const char *dir, char (*names)[40], const char *tag,
                          sep_out_format fmt, sep_clip_mode clip, char (*files)[SEP_STEM_FILE_MAX],
                          int64_t *bytes, sep_audio_progress_fn progress, void *user, char *err,
                          size_t errlen)
{
    const char *ext = sep_out_extension(fmt);
    char file[SEP_STEMS_MAX][SEP_STEM_FILE_MAX];
    char final[SEP_STEMS_MAX][4096], tmp[SEP_STEMS_MAX][4200], prev[SEP_STEMS_MAX][4200];
    int had_prev[SEP_STEMS_MAX] = {0};
    int encoded = 0, renamed = 0, saved = 0, rc = -1;
    clip = effective_clip(clip, fmt);
    s->error = SEP_AUDIO_EIO;
    for (int i = 0; i < s->n_stems; i++) {
        int fl = tag && *tag ? snprintf(file[i], sizeof(file[i]), "%s.%s.%s", names[i], tag, ext)
                             : snprintf(file[i], sizeof(file[i]), "%s.%s", names[i], ext);
        if (fl >= (int)sizeof(file[i]) ||
            snprintf(final[i], sizeof(final[i]), "%s/%s", dir, file[i]) >= (int)sizeof(final[i])) {
            sep_set_err(err, errlen, "output path too long");
            return -1;
        }
        /* this process's own temporary names: two runs on one folder never share one */
        snprintf(tmp[i], sizeof(tmp[i]), "%s/.%s.%d.partial", dir, file[i], (int)getpid());
        snprintf(prev[i], sizeof(prev[i]), "%s/.%s.%d.previous", dir, file[i], (int)getpid());
    }
    /* every stem under its temporary name first ... */
    for (; encoded < s->n_stems; encoded++) {
        int i = encoded;
        if (encode_stem(s, i, tmp[i], fmt, clip, progress, user, (double)i / s->n_stems,
                        1.0 / s->n_stems, err, errlen)) {
            unlink(tmp[i]);
            goto fail;
        }
    }
    /* ... a previous run's stems kept aside (hard links), so that a failure below puts
     * the old set back whole instead of leaving a mix of old and new ... */
    for (; saved < s->n_stems; saved++) {
        int i = saved;
        unlink(prev[i]);
        if (link(final[i], prev[i]) == 0)
            had_prev[i] = 1;
    }
    /* ... then all renamed: a failure removes the new ones and restores the old */
    for (; renamed < s->n_stems; renamed++) {
        int i = renamed;
        if (rename(tmp[i], final[i]) != 0) {
            s->error = SEP_AUDIO_EIO;
            sep_set_err(err, errlen, "cannot rename '%s' to '%s': %s", tmp[i], final[i],
                        strerror(errno));
            goto fail;
        }
    }
    for (int i = 0; i < s->n_stems; i++) {
        if (had_prev[i])
            unlink(prev[i]);
        if (files)
            snprintf(files[i], SEP_STEM_FILE_MAX, "%s", file[i]);
        if (bytes) {
            struct stat st;
            bytes[i] = stat(final[i], &st) == 0 ? (int64_t)st.st_size : -1;
        }
    }
    if (progress)
        progress(user, 1.0);
    s->error = SEP_AUDIO_OK;
    return 0;
fail:
    for (int i = 0; i < renamed; i++)
        if (!had_prev[i] || rename(prev[i], final[i]) != 0)
            unlink(final[i]);
    for (int i = renamed; i < saved; i++)
        if (had_prev[i])
            unlink(prev[i]);
    for (int i = renamed; i < encoded; i++)
        unlink(tmp[i]);
    return rc;
}

void sep_stem_spool_close(sep_stem_spool *s)
{
    for (int i = 0; i < SEP_STEMS_MAX; i++) {
        if (s->fds[i] >= 0)
            close(s->fds[i]);
        s->fds[i] = -1;
    }
    free(s->buf);
    s->buf = NULL;
    s->buf_floats = 0;
}
