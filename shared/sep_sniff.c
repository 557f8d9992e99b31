/*
 * Container detection from magic bytes (table in sep_sniff.h).
 */
#include "shared/sep_sniff.h"

#include <string.h>

static const char *const sep_audio_names[SEP_AUDIO_TYPE_COUNT] = {
    [SEP_AUDIO_UNKNOWN] = "unknown",
    [SEP_AUDIO_WAV] = "wav",
    [SEP_AUDIO_RF64] = "rf64",
    [SEP_AUDIO_FLAC] = "flac",
    [SEP_AUDIO_OGG_VORBIS] = "ogg_vorbis",
    [SEP_AUDIO_OGG_OPUS] = "ogg_opus",
    [SEP_AUDIO_MP3] = "mp3",
    [SEP_AUDIO_AIFF] = "aiff",
    [SEP_AUDIO_AIFC] = "aifc",
};

static const char *const sep_audio_exts[SEP_AUDIO_TYPE_COUNT] = {
    [SEP_AUDIO_UNKNOWN] = NULL, [SEP_AUDIO_WAV] = "wav",        [SEP_AUDIO_RF64] = "wav",
    [SEP_AUDIO_FLAC] = "flac",  [SEP_AUDIO_OGG_VORBIS] = "ogg", [SEP_AUDIO_OGG_OPUS] = "opus",
    [SEP_AUDIO_MP3] = "mp3",    [SEP_AUDIO_AIFF] = "aiff",      [SEP_AUDIO_AIFC] = "aifc",
};

static int sep_has(const unsigned char *p, size_t len, size_t off, const char *magic)
{
    size_t n = strlen(magic);
    return len >= off + n && memcmp(p + off, magic, n) == 0;
}

/* An Ogg page: "OggS", version 0, then the first packet after the segment table. */
static sep_audio_type_t sep_sniff_ogg(const unsigned char *p, size_t len)
{
    if (len < 27 || p[4] != 0)
        return SEP_AUDIO_UNKNOWN;
    size_t segments = p[26];
    size_t packet = 27 + segments;
    if (sep_has(p, len, packet, "\x01vorbis"))
        return SEP_AUDIO_OGG_VORBIS;
    if (sep_has(p, len, packet, "OpusHead"))
        return SEP_AUDIO_OGG_OPUS;
    return SEP_AUDIO_UNKNOWN;
}

/* ID3v2: "ID3", major version 2..4, revision != 0xff, flags, 4 sync-safe size bytes. */
static int sep_is_id3v2(const unsigned char *p, size_t len)
{
    if (len < 10 || memcmp(p, "ID3", 3) != 0)
        return 0;
    if (p[3] < 2 || p[3] > 4 || p[4] == 0xff)
        return 0;
    for (int i = 6; i < 10; i++) {
        if (p[i] & 0x80)
            return 0;
    }
    return 1;
}

/* MPEG audio frame header: 11 sync bits, version != reserved, layer != 0 (0 is ADTS
 * AAC's), bitrate index not 15 ("bad"), sample-rate index not 3 (reserved), and
 * emphasis not 2 (reserved). */
static int sep_is_mpeg_frame(const unsigned char *p, size_t len)
{
    if (len < 4 || p[0] != 0xff || (p[1] & 0xe0) != 0xe0)
        return 0;
    unsigned version = (p[1] >> 3) & 3;
    unsigned layer = (p[1] >> 1) & 3;
    unsigned bitrate = p[2] >> 4;
    unsigned rate = (p[2] >> 2) & 3;
    unsigned emphasis = p[3] & 3;
    return version != 1 && layer != 0 && bitrate != 15 && rate != 3 && emphasis != 2;
}

sep_audio_type_t sep_sniff(const void *data, size_t len)
{
    const unsigned char *p = data;
    if (p == NULL)
        return SEP_AUDIO_UNKNOWN;
    if (sep_has(p, len, 0, "RIFF") && sep_has(p, len, 8, "WAVE"))
        return SEP_AUDIO_WAV;
    if ((sep_has(p, len, 0, "RF64") || sep_has(p, len, 0, "BW64")) && sep_has(p, len, 8, "WAVE"))
        return SEP_AUDIO_RF64;
    if (sep_has(p, len, 0, "fLaC"))
        return SEP_AUDIO_FLAC;
    if (sep_has(p, len, 0, "OggS"))
        return sep_sniff_ogg(p, len);
    if (sep_has(p, len, 0, "FORM") && sep_has(p, len, 8, "AIFF"))
        return SEP_AUDIO_AIFF;
    if (sep_has(p, len, 0, "FORM") && sep_has(p, len, 8, "AIFC"))
        return SEP_AUDIO_AIFC;
    if (sep_is_id3v2(p, len) || sep_is_mpeg_frame(p, len))
        return SEP_AUDIO_MP3;
    return SEP_AUDIO_UNKNOWN;
}

const char *sep_audio_type_name(sep_audio_type_t type)
{
    return (unsigned)type < SEP_AUDIO_TYPE_COUNT ? sep_audio_names[type] : "unknown";
}

const char *sep_audio_type_ext(sep_audio_type_t type)
{
    return (unsigned)type < SEP_AUDIO_TYPE_COUNT ? sep_audio_exts[type] : NULL;
}
