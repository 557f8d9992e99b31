/*
 * audiotool.c - the CLI tests' audio helper, on libsndfile (what workerd decodes with,
 * and an independent reader of what it writes).
 *
 *   audiotool gen OUT FORMAT RATE CHANNELS SECONDS   synthetic music-like signal, 50 ms
 *                                                    raised-cosine fades at both ends
 *   audiotool convert IN OUT FORMAT                  re-encode (same rate and channels)
 *   audiotool info FILE                              one JSON line: rate, channels,
 *                                                    frames, major and subtype format
 *   audiotool dump FILE OUT.f32                      samples as raw float32
 *                                                    [channels][frames]
 *
 * FORMAT: wav16 wav24 wavf32 flac16 flac24 mp3 ogg opus. Exit status 0, or 1 with a
 * message.
 */
#include <math.h>
#include <sndfile.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse_format(const char *name)
{
    static const struct {
        const char *name;
        int format;
    } table[] = {
        {"wav16", SF_FORMAT_WAV | SF_FORMAT_PCM_16},
        {"wav24", SF_FORMAT_WAV | SF_FORMAT_PCM_24},
        {"wavf32", SF_FORMAT_WAV | SF_FORMAT_FLOAT},
        {"flac16", SF_FORMAT_FLAC | SF_FORMAT_PCM_16},
        {"flac24", SF_FORMAT_FLAC | SF_FORMAT_PCM_24},
        {"mp3", SF_FORMAT_MPEG | SF_FORMAT_MPEG_LAYER_III},
        {"ogg", SF_FORMAT_OGG | SF_FORMAT_VORBIS},
        {"opus", SF_FORMAT_OGG | SF_FORMAT_OPUS},
    };
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (strcmp(name, table[i].name) == 0)
            return table[i].format;
    return 0;
}

static SNDFILE *open_write(const char *path, const char *fmt, int rate, int channels)
{
    SF_INFO info = {.samplerate = rate, .channels = channels, .format = parse_format(fmt)};
    if (!info.format) {
        fprintf(stderr, "audiotool: unknown format '%s'\n", fmt);
        return NULL;
    }
    SNDFILE *sf = sf_open(path, SFM_WRITE, &info);
    if (!sf)
        fprintf(stderr, "audiotool: cannot write '%s': %s\n", path, sf_strerror(NULL));
    return sf;
}

static int cmd_gen(char **argv)
{
    int rate = atoi(argv[2]), channels = atoi(argv[3]);
    double seconds = atof(argv[4]);
    SNDFILE *sf = open_write(argv[0], argv[1], rate, channels);
    if (!sf)
        return 1;
    long long frames = (long long)(seconds * rate);
    float *buf = malloc(sizeof(float) * 4096 * channels);
    for (long long pos = 0; pos < frames; pos += 4096) {
        int n = frames - pos < 4096 ? (int)(frames - pos) : 4096;
        for (int t = 0; t < n; t++) {
            double x = (double)(pos + t) / rate;
            /* the fades make the signal the same function of time at every rate, edges
             * included (no step for a resampler to ring on) */
            double edge = fmin(x, (double)frames / rate - x), fade = 1.0;
            if (edge < 0.05)
                fade = 0.5 - 0.5 * cos(M_PI * fmax(edge, 0.0) / 0.05);
            for (int c = 0; c < channels; c++)
                buf[t * channels + c] = (float)(fade * (0.3 * sin(2 * M_PI * (220 + 110 * c) * x) *
                                                            (0.6 + 0.4 * sin(2 * M_PI * 2 * x)) +
                                                        0.1 * sin(2 * M_PI * 1500 * x + c) +
                                                        0.05 * sin(2 * M_PI * 55 * x)));
        }
        sf_writef_float(sf, buf, n);
    }
    free(buf);
    return sf_close(sf) == 0 ? 0 : 1;
}

static int cmd_convert(char **argv)
{
    SF_INFO in_info = {0};
    SNDFILE *in = sf_open(argv[0], SFM_READ, &in_info);
    if (!in) {
        fprintf(stderr, "audiotool: cannot read '%s': %s\n", argv[0], sf_strerror(NULL));
        return 1;
    }
    SNDFILE *out = open_write(argv[1], argv[2], in_info.samplerate, in_info.channels);
    if (!out) {
        sf_close(in);
        return 1;
    }
    float *buf = malloc(sizeof(float) * 4096 * in_info.channels);
    sf_count_t n;
    while ((n = sf_readf_float(in, buf, 4096)) > 0)
        sf_writef_float(out, buf, n);
    free(buf);
    sf_close(in);
    return sf_close(out) == 0 ? 0 : 1;
}

static int cmd_info(char **argv)
{
    SF_INFO info = {0};
    SNDFILE *sf = sf_open(argv[0], SFM_READ, &info);
    if (!sf) {
        fprintf(stderr, "audiotool: cannot read '%s': %s\n", argv[0], sf_strerror(NULL));
        return 1;
    }
    SF_FORMAT_INFO major = {.format = info.format & SF_FORMAT_TYPEMASK};
    SF_FORMAT_INFO sub = {.format = info.format & SF_FORMAT_SUBMASK};
    sf_command(sf, SFC_GET_FORMAT_INFO, &major, sizeof(major));
    sf_command(sf, SFC_GET_FORMAT_INFO, &sub, sizeof(sub));
    printf("{\"samplerate\": %d, \"channels\": %d, \"frames\": %lld, \"major\": \"%s\", "
           "\"subtype\": \"%s\"}\n",
           info.samplerate, info.channels, (long long)info.frames,
           major.extension ? major.extension : "?", sub.name ? sub.name : "?");
    sf_close(sf);
    return 0;
}

static int cmd_dump(char **argv)
{
    SF_INFO info = {0};
    SNDFILE *sf = sf_open(argv[0], SFM_READ, &info);
    if (!sf) {
        fprintf(stderr, "audiotool: cannot read '%s': %s\n", argv[0], sf_strerror(NULL));
        return 1;
    }
    float *inter = malloc(sizeof(float) * info.frames * info.channels);
    float *planar = malloc(sizeof(float) * info.frames * info.channels);
    sf_count_t got = sf_readf_float(sf, inter, info.frames);
    sf_close(sf);
    for (int c = 0; c < info.channels; c++)
        for (sf_count_t t = 0; t < got; t++)
            planar[(size_t)c * got + t] = inter[(size_t)t * info.channels + c];
    FILE *f = fopen(argv[1], "wb");
    int rc = !f || fwrite(planar, sizeof(float), (size_t)got * info.channels, f) !=
                       (size_t)got * info.channels;
    if (f && fclose(f) != 0)
        rc = 1;
    free(inter);
    free(planar);
    if (rc)
        fprintf(stderr, "audiotool: cannot write '%s'\n", argv[1]);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc >= 7 && strcmp(argv[1], "gen") == 0)
        return cmd_gen(argv + 2);
    if (argc >= 5 && strcmp(argv[1], "convert") == 0)
        return cmd_convert(argv + 2);
    if (argc >= 3 && strcmp(argv[1], "info") == 0)
        return cmd_info(argv + 2);
    if (argc >= 4 && strcmp(argv[1], "dump") == 0)
        return cmd_dump(argv + 2);
    fprintf(stderr, "usage: audiotool gen OUT FORMAT RATE CHANNELS SECONDS\n"
                    "       audiotool convert IN OUT FORMAT\n"
                    "       audiotool info FILE\n"
                    "       audiotool dump FILE OUT.f32\n");
    return 2;
}
