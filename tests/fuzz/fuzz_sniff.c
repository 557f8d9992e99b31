/*
 * fuzz_sniff.c - libFuzzer target over the magic-byte sniffer (shared/sep_sniff.c): the
 * first bytes of every upload, from the internet, decide the input's type. Any prefix
 * length is tried (the module sniffs at most the head it has): the type's name (and its
 * extension, unless unknown) must exist for every answer, and a type recognised in a
 * shorter head must be the type of the whole input.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "shared/sep_sniff.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sep_audio_type_t whole = sep_sniff(data, size);
    if (!sep_audio_type_name(whole) || (whole != SEP_AUDIO_UNKNOWN && !sep_audio_type_ext(whole)))
        abort();
    /* a copy of exactly `size` bytes on the heap: ASan sees any read past the end */
    for (size_t len = 0; len <= size && len <= 80; len++) {
        uint8_t *copy = malloc(len ? len : 1);
        if (!copy)
            return 0;
        memcpy(copy, data, len);
        sep_audio_type_t t = sep_sniff(copy, len);
        free(copy);
        if (!sep_audio_type_name(t) || (t != SEP_AUDIO_UNKNOWN && !sep_audio_type_ext(t)))
            abort();
        /* a type found in a shorter head never changes with more bytes, except unknown */
        if (t != SEP_AUDIO_UNKNOWN && len <= size && t != sep_sniff(data, size))
            abort();
    }
    return 0;
}
