/*
 * Magic-byte sniffing of uploaded audio: the only look the request path takes at
 * the body. Decides the container from the first SEP_SNIFF_BYTES bytes:
 *
 *   "RIFF" .... "WAVE"                 WAV
 *   "RF64" / "BW64" .... "WAVE"        RF64 (64-bit WAV; EBU BW64)
 *   "fLaC"                             FLAC
 *   "OggS" + first packet "\x01vorbis" Ogg Vorbis
 *   "OggS" + first packet "OpusHead"   Ogg Opus
 *   "ID3" v2.2-2.4 tag header          MP3 (ID3v2 tag in front of MPEG audio)
 *   MPEG-1/2/2.5 Layer I/II/III frame  MP3 (11-bit sync, valid version, layer,
 *   header                             bitrate and sample-rate fields)
 *   "FORM" .... "AIFF" / "AIFC"        AIFF / AIFC
 *
 * Anything else (including Ogg with another codec and ADTS AAC, whose sync word
 * looks like MPEG audio with layer 0) is SEP_AUDIO_UNKNOWN: the API answers 415.
 */
#ifndef SEP_SNIFF_H
#define SEP_SNIFF_H

#include <stddef.h>

#define SEP_SNIFF_BYTES 64

typedef enum sep_audio_type {
    SEP_AUDIO_UNKNOWN = 0,
    SEP_AUDIO_WAV,
    SEP_AUDIO_RF64,
    SEP_AUDIO_FLAC,
    SEP_AUDIO_OGG_VORBIS,
    SEP_AUDIO_OGG_OPUS,
    SEP_AUDIO_MP3,
    SEP_AUDIO_AIFF,
    SEP_AUDIO_AIFC,
    SEP_AUDIO_TYPE_COUNT
} sep_audio_type_t;

/* Sniffs the first len bytes of a file (pass up to SEP_SNIFF_BYTES). */
sep_audio_type_t sep_sniff(const void *data, size_t len);

/* Short name stored in the job ("wav", "rf64", "flac", "ogg_vorbis", "ogg_opus",
 * "mp3", "aiff", "aifc"; "unknown"). */
const char *sep_audio_type_name(sep_audio_type_t type);

/* Extension of the spool file ("wav" for WAV and RF64, "flac", "ogg", "opus",
 * "mp3", "aiff", "aifc"); NULL for unknown. */
const char *sep_audio_type_ext(sep_audio_type_t type);

#endif
