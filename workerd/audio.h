/*
 * audio.h - audio decoding and stem encoding for workerd, in bounded memory.
 *
 * Decoding: any file libsndfile reads (WAV/RF64, FLAC, Ogg Vorbis, Opus, MP3, AIFF...)
 * is decoded block by block, converted to the model's channel count the way
 * demucs.audio.convert_audio_channels does (mono is duplicated, extra channels are
 * dropped, a mono model averages), resampled to the model's rate with libsoxr (high
 * quality, length floor(frames * to / from) as julius.resample_frac), and spooled as
 * interleaved float32 into an anonymous temporary file. Random access afterwards is by
 * pread(), so nothing of the track stays resident: memory does not grow with length.
 *
 * Encoding: stems arrive in order as [stems][channels][count] blocks (the apply layer's
 * write callback) and are spooled as float32 while their peaks are tracked; finishing
 * applies demucs.audio.save_audio's clip strategy (default "rescale": divide by
 * max(1.01 * peak, 1)), demucs' sample conversion (clamp to [-1, 1], then x * 32767 or
 * x * 8388607 truncated toward zero, or float32 written as it is: with clip "none" a
 * float stem keeps samples beyond +-1, as demucs writes them) and writes each stem to
 * `{dir}/{stem}.{wav|flac}` through a temporary name and rename(), so a stem file is
 * either absent or complete.
 */
#ifndef WORKERD_AUDIO_H
#define WORKERD_AUDIO_H

#include <stddef.h>
#include <stdint.h>

/* What a failed call ran into (the job runner maps it onto its outcome codes). */
typedef enum {
    SEP_AUDIO_OK = 0,
    SEP_AUDIO_EMISSING,  /* the input does not exist */
    SEP_AUDIO_EINVALID,  /* not decodable: unknown format, corrupt, truncated, no channels
                            or frames, channel layout the model cannot take, NaN/Inf */
    SEP_AUDIO_EIO,       /* reading or writing a spool/output failed (ENOSPC, EIO, ...) */
    SEP_AUDIO_ECANCELED, /* a progress callback asked to stop */
} sep_audio_error;

/* ---- decoding -------------------------------------------------------------------- */

typedef struct {
    int fd;              /* anonymous temp file: interleaved float32 [frames][channels] */
    int64_t frames;      /* at the target rate */
    int channels;        /* target channels */
    int samplerate;      /* target rate */
    int src_samplerate;  /* the file's */
    int src_channels;    /* the file's */
    int64_t src_frames;  /* decoded at the file's rate */
    char src_format[64]; /* e.g. "WAV (Microsoft), Signed 16 bit PCM" */
    float *buf;          /* pread scratch */
    size_t buf_floats;
    sep_audio_error error; /* why sep_audio_decode failed */
} sep_decoded;

/* Fraction of the input decoded so far (0..1); may be NULL. Returns non-zero to abort. */
typedef int (*sep_audio_progress_fn)(void *user, double fraction);

/* Below this source rate an input is refused (SEP_AUDIO_EINVALID): resampled to the
 * model's 44.1 kHz, a small file at a few Hz would be hours of audio to separate. */
#define SEP_AUDIO_MIN_RATE 4000

/* Decodes `path` into a temp file created in `tmp_dir`. Returns 0, or -1 with a message
 * and out->error set. Refused as SEP_AUDIO_EINVALID besides undecodable files: a source
 * rate below SEP_AUDIO_MIN_RATE, a file
 * shorter than its header says (a truncated WAV data chunk, FLAC or Ogg stream ending
 * early, an MP3 with under 98 % of its announced frames), and any non-finite sample
 * (NaN/Inf, from float files), named with its time. */
int sep_audio_decode(const char *path, int samplerate, int channels, const char *tmp_dir,
                     sep_decoded *out, sep_audio_progress_fn progress, void *user, char *err,
                     size_t errlen);

/* Frames [start, start + count) into dst as [channels][count]. 0 or -1. */
int sep_decoded_read(sep_decoded *d, int64_t start, int count, float *dst);

void sep_decoded_close(sep_decoded *d);

/* ---- encoding -------------------------------------------------------------------- */

typedef enum {
    SEP_OUT_WAV16 = 0, /* 16-bit PCM WAV (demucs' default) */
    SEP_OUT_WAV24,     /* 24-bit PCM WAV (--int24) */
    SEP_OUT_WAVF32,    /* 32-bit float WAV (--float32) */
    SEP_OUT_FLAC16,    /* 16-bit FLAC (--flac) */
    SEP_OUT_FLAC24,    /* 24-bit FLAC (--flac --int24) */
} sep_out_format;

typedef enum {
    SEP_CLIP_RESCALE = 0, /* x / max(1.01 * peak, 1) (demucs' default) */
    SEP_CLIP_CLAMP,       /* clamp to [-0.99, 0.99] */
    SEP_CLIP_NONE,        /* nothing: integer formats clamp to [-1, 1], float keeps |x| > 1 */
    SEP_CLIP_AUTO,        /* none for float WAV, rescale for the others (the API's rule) */
} sep_clip_mode;

const char *sep_out_extension(sep_out_format f);

#define SEP_STEMS_MAX 8

typedef struct {
    int n_stems, channels, samplerate;
    int fds[SEP_STEMS_MAX]; /* float32 spool per stem, interleaved */
    float peak[SEP_STEMS_MAX];
    int64_t frames;
    float *buf;
    size_t buf_floats;
    sep_audio_error error; /* why a call failed */
} sep_stem_spool;

/* Opens one spool per stem in `tmp_dir`. 0 or -1 with a message. */
int sep_stem_spool_open(sep_stem_spool *s, int n_stems, int channels, int samplerate,
                        const char *tmp_dir, char *err, size_t errlen);

/* Appends frames laid out [stems][channels][count] (the apply write callback's layout). */
int sep_stem_spool_append(sep_stem_spool *s, int count, const float *src);

#define SEP_STEM_FILE_MAX 128

/* Encodes every stem to `{dir}/{names[i]}.{ext}`, or `{dir}/{names[i]}.{tag}.{ext}` when
 * tag is not NULL or empty, all or nothing: each stem is encoded under a hidden
 * temporary name in dir, then all are renamed; on any failure none of them (temporary
 * or final) is left, and stems a previous run left under the final names are put
 * back (they are hard-linked aside while the new ones are renamed in), so the folder
 * holds the old set or the new one, never a mix. The file names go to files[i] and their sizes to
 * bytes[i] (either may be NULL). progress (may be NULL) gets the fraction of all stems encoded and
 * may cancel. 0, or -1 with a message and s->error set. */
int sep_stem_spool_finish(sep_stem_spool *s, const char *dir, char (*names)[40], const char *tag,
                          sep_out_format fmt, sep_clip_mode clip, char (*files)[SEP_STEM_FILE_MAX],
                          int64_t *bytes, sep_audio_progress_fn progress, void *user, char *err,
                          size_t errlen);

void sep_stem_spool_close(sep_stem_spool *s);

#endif
