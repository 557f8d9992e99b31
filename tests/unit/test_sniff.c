/*
 * Unit tests of magic-byte sniffing (shared/sep_sniff.c): every accepted container,
 * near misses that must be refused, and inputs too short to decide.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "shared/sep_sniff.h"

static sep_audio_type_t sniff_bytes(const char *bytes, size_t len)
{
    return sep_sniff(bytes, len);
}

#define SNIFF(lit) sniff_bytes((lit), sizeof(lit) - 1)

/* An Ogg first page whose first packet starts with the given codec header. */
static size_t ogg_page(unsigned char *out, const char *codec, size_t codec_len)
{
    memset(out, 0, 64);
    memcpy(out, "OggS", 4);
    out[4] = 0;   /* version */
    out[5] = 2;   /* beginning of stream */
    out[26] = 1;  /* one segment */
    out[27] = 30; /* its length */
    memcpy(out + 28, codec, codec_len);
    return 28 + codec_len;
}

static void test_riff_family(void **state)
{
    (void)state;
    assert_int_equal(SNIFF("RIFF\x24\x08\x00\x00WAVEfmt "), SEP_AUDIO_WAV);
    assert_int_equal(SNIFF("RF64\xff\xff\xff\xffWAVEds64"), SEP_AUDIO_RF64);
    assert_int_equal(SNIFF("BW64\xff\xff\xff\xffWAVEds64"), SEP_AUDIO_RF64);
    assert_int_equal(SNIFF("RIFF\x24\x08\x00\x00AVI LIST"), SEP_AUDIO_UNKNOWN);
    assert_int_equal(SNIFF("RIFF\x24\x08\x00\x00WEBPVP8 "), SEP_AUDIO_UNKNOWN);
    assert_int_equal(SNIFF("RIFF\x24\x08"), SEP_AUDIO_UNKNOWN); /* too short */
    assert_string_equal(sep_audio_type_ext(SEP_AUDIO_WAV), "wav");
    assert_string_equal(sep_audio_type_ext(SEP_AUDIO_RF64), "wav");
    assert_string_equal(sep_audio_type_name(SEP_AUDIO_RF64), "rf64");
}

static void test_flac_and_aiff(void **state)
{
    (void)state;
    assert_int_equal(SNIFF("fLaC\x00\x00\x00\x22"), SEP_AUDIO_FLAC);
    assert_int_equal(SNIFF("FORM\x00\x00\x10\x00"
                           "AIFFCOMM"),
                     SEP_AUDIO_AIFF);
    assert_int_equal(SNIFF("FORM\x00\x00\x10\x00"
                           "AIFCFVER"),
                     SEP_AUDIO_AIFC);
    assert_int_equal(SNIFF("FORM\x00\x00\x10\x00"
                           "ILBMBMHD"),
                     SEP_AUDIO_UNKNOWN);
    assert_int_equal(SNIFF("flac"), SEP_AUDIO_UNKNOWN);
    assert_string_equal(sep_audio_type_ext(SEP_AUDIO_FLAC), "flac");
    assert_string_equal(sep_audio_type_ext(SEP_AUDIO_AIFF), "aiff");
    assert_string_equal(sep_audio_type_ext(SEP_AUDIO_AIFC), "aifc");
}

static void test_ogg_codecs(void **state)
{
    (void)state;
    unsigned char page[64];
    size_t n = ogg_page(page, "\x01vorbis", 7);
    assert_int_equal(sep_sniff(page, n), SEP_AUDIO_OGG_VORBIS);
    n = ogg_page(page, "OpusHead", 8);
    assert_int_equal(sep_sniff(page, n), SEP_AUDIO_OGG_OPUS);
    n = ogg_page(page,
                 "\x7f"
                 "FLAC",
                 5);
    assert_int_equal(sep_sniff(page, n), SEP_AUDIO_UNKNOWN);
    n = ogg_page(page, "\x80theora", 7);
    assert_int_equal(sep_sniff(page, n), SEP_AUDIO_UNKNOWN);
    /* truncated before the codec header */
    n = ogg_page(page, "OpusHead", 8);
    assert_int_equal(sep_sniff(page, 30), SEP_AUDIO_UNKNOWN);
    /* bad page version */
    page[4] = 1;
    assert_int_equal(sep_sniff(page, n), SEP_AUDIO_UNKNOWN);
    assert_string_equal(sep_audio_type_ext(SEP_AUDIO_OGG_VORBIS), "ogg");
    assert_string_equal(sep_audio_type_ext(SEP_AUDIO_OGG_OPUS), "opus");
}

static void test_mp3(void **state)
{
    (void)state;
    /* ID3v2.3 and v2.4 tags */
    assert_int_equal(SNIFF("ID3\x03\x00\x00\x00\x00\x1f\x76"), SEP_AUDIO_MP3);
    assert_int_equal(SNIFF("ID3\x04\x00\x00\x00\x00\x00\x10"), SEP_AUDIO_MP3);
    assert_int_equal(SNIFF("ID3\x05\x00\x00\x00\x00\x00\x10"), SEP_AUDIO_UNKNOWN); /* version */
    assert_int_equal(SNIFF("ID3\x03\x00\x00\x80\x00\x00\x10"), SEP_AUDIO_UNKNOWN); /* size */
    /* MPEG-1 Layer III, 128 kbit/s, 44.1 kHz */
    assert_int_equal(SNIFF("\xff\xfb\x90\x64"), SEP_AUDIO_MP3);
    /* MPEG-2 Layer III, MPEG-2.5 Layer III, MPEG-1 Layer II */
    assert_int_equal(SNIFF("\xff\xf3\x44\xc4"), SEP_AUDIO_MP3);
    assert_int_equal(SNIFF("\xff\xe3\x18\xc4"), SEP_AUDIO_MP3);
    assert_int_equal(SNIFF("\xff\xfd\x94\x04"), SEP_AUDIO_MP3);
    /* ADTS AAC: sync word but layer 0 */
    assert_int_equal(SNIFF("\xff\xf1\x50\x80"), SEP_AUDIO_UNKNOWN);
    /* reserved version, bad bitrate, reserved sample rate, reserved emphasis */
    assert_int_equal(SNIFF("\xff\xeb\x90\x64"), SEP_AUDIO_UNKNOWN);
    assert_int_equal(SNIFF("\xff\xfb\xf0\x64"), SEP_AUDIO_UNKNOWN);
    assert_int_equal(SNIFF("\xff\xfb\x9c\x64"), SEP_AUDIO_UNKNOWN);
    assert_int_equal(SNIFF("\xff\xfb\x90\x66"), SEP_AUDIO_UNKNOWN);
    assert_int_equal(SNIFF("\xff\xfb\x90"), SEP_AUDIO_UNKNOWN); /* short */
    assert_string_equal(sep_audio_type_ext(SEP_AUDIO_MP3), "mp3");
}

static void test_unknown(void **state)
{
    (void)state;
    assert_int_equal(SNIFF("hello, this is text\n"), SEP_AUDIO_UNKNOWN);
    assert_int_equal(SNIFF("\x00\x01\x02\x03 not audio"), SEP_AUDIO_UNKNOWN);
    assert_int_equal(SNIFF("%PDF-1.7\n"), SEP_AUDIO_UNKNOWN);
    assert_int_equal(SNIFF("\x89PNG\r\n\x1a\n"), SEP_AUDIO_UNKNOWN);
    assert_int_equal(SNIFF("\x00\x00\x00\x20"
                           "ftypM4A "),
                     SEP_AUDIO_UNKNOWN);
    assert_int_equal(sep_sniff("", 0), SEP_AUDIO_UNKNOWN);
    assert_int_equal(sep_sniff(NULL, 10), SEP_AUDIO_UNKNOWN);
    assert_null(sep_audio_type_ext(SEP_AUDIO_UNKNOWN));
    assert_string_equal(sep_audio_type_name(SEP_AUDIO_UNKNOWN), "unknown");
    assert_string_equal(sep_audio_type_name((sep_audio_type_t)99), "unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_riff_family), cmocka_unit_test(test_flac_and_aiff),
        cmocka_unit_test(test_ogg_codecs),  cmocka_unit_test(test_mp3),
        cmocka_unit_test(test_unknown),
    };
    return cmocka_run_group_tests_name("sniff", tests, NULL, NULL);
}
