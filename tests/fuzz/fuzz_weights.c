/*
 * fuzz_weights.c - libFuzzer target over the whole weights load path: the safetensors
 * container (header length, JSON, dtypes, shapes, offsets, layout), the metadata
 * (format, sources, rates, segment, bag weights) and each network's hyperparameters
 * and structure (htd_parse_hparams + htd_build against the mapped tensors).
 *
 * Each input is written to a memfd and loaded through /proc/self/fd/N, exactly as
 * sep_model_load maps a file from the models directory. A model that loads is also
 * printed (to /dev/null) and its parameters counted, which walks every field the
 * loader filled in. Built with ASan + UBSan (tests/fuzz/fuzz.mk); the seed corpus in
 * tests/fuzz/weights/ holds converted tiny models.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "models/engine.h"

static FILE *devnull;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!devnull)
        devnull = fopen("/dev/null", "w");
    int fd = memfd_create("fuzz-weights", MFD_CLOEXEC);
    if (fd < 0)
        abort();
    size_t off = 0;
    while (off < size) {
        ssize_t n = write(fd, data + off, size - off);
        if (n <= 0)
            abort();
        off += (size_t)n;
    }
    char path[64], err[1024];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    sep_model *m = sep_model_load(path, err, sizeof(err));
    if (m) {
        const sep_model_info *info = sep_model_get_info(m);
        for (int i = 0; i < info->n_models; i++)
            (void)sep_model_param_count(m, i);
        for (int s = 0; s < info->n_sources; s++)
            if (sep_model_source_index(m, info->sources[s]) != s)
                abort(); /* names are distinct */
        if (devnull)
            sep_model_print(m, devnull);
        sep_model_free(m);
    }
    close(fd);
    return 0;
}
