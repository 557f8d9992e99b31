/*
 * fuzz_audio.c - libFuzzer target over workerd's audio decoding (workerd/audio.c on
 * libsndfile + libsoxr): every upload's bytes reach it. Each input is written to a
 * memfd and decoded through /proc/self/fd/N to 44.1 kHz stereo float, as a job's
 * input is; a decode that succeeds is read back in full (every frame it announced
 * must be readable, every sample finite). A refusal must come with a message.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "workerd/audio.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz-audio", MFD_CLOEXEC);
    if (fd < 0)
        abort();
    if (size && write(fd, data, size) != (ssize_t)size)
        abort();
    char path[64], err[512] = "";
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    sep_decoded d;
    if (sep_audio_decode(path, 44100, 2, "/tmp", &d, NULL, NULL, err, sizeof(err)) == 0) {
        enum { CHUNK = 4096 };
        static float buf[2 * CHUNK];
        for (int64_t at = 0; at < d.frames; at += CHUNK) {
            int n = d.frames - at < CHUNK ? (int)(d.frames - at) : CHUNK;
            if (sep_decoded_read(&d, at, n, buf) != 0)
                abort(); /* announced frames must be readable */
            for (int i = 0; i < 2 * n; i++)
                if (!isfinite(buf[i]))
                    abort(); /* non-finite input is refused at decode */
        }
        sep_decoded_close(&d);
    } else if (!err[0]) {
        abort(); /* a refusal names its reason */
    }
    close(fd);
    return 0;
}
