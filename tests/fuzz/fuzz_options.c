/*
 * fuzz_options.c - libFuzzer target over the job option decoder (shared/sep_options.c),
 * fed as the module feeds it from a query string or form fields: the input is split
 * at '&' into name=value pairs; each goes through sep_options_set, then the
 * cross-option rules (sep_options_finish). For accepted options, the output stems
 * list and the stem-name check are walked too, and the overlap is printed and parsed
 * back (it must read back to the same double).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/sep_options.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sep_options_t opts;
    char err[256];
    sep_options_init(&opts, SEP_MODEL_HTDEMUCS);
    const char *p = (const char *)data, *end = p + size;
    int invalid = 0;
    while (p < end && !invalid) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(stop - p));
        sep_str_t name = {p, (size_t)((eq ? eq : stop) - p)};
        sep_str_t value = eq ? (sep_str_t){eq + 1, (size_t)(stop - eq - 1)} : SEP_STR_NULL;
        if (sep_options_set(&opts, name, value, err, sizeof(err)) == SEP_OPTION_INVALID) {
            if (!memchr(err, '\0', sizeof(err)))
                abort();
            invalid = 1;
        }
        p = amp ? amp + 1 : end;
    }
    if (invalid || sep_options_finish(&opts, err, sizeof(err)) != 0)
        return 0;
    if (opts.shifts < 0 || opts.shifts > SEP_SHIFTS_MAX ||
        !(opts.overlap >= 0 && opts.overlap < SEP_OVERLAP_LIMIT))
        abort();
    const char *stems = sep_options_stems_name(&opts);
    if (!stems)
        abort();
    sep_str_t stems_option = sep_str_from_cstr(stems);
    char names[SEP_MAX_STEMS][SEP_STEM_NAME_MAX];
    int n = sep_output_stems(opts.model, stems_option, names);
    for (int i = 0; i < n; i++)
        if (!sep_output_stem_valid(opts.model, stems_option, sep_str_from_cstr(names[i])))
            abort();
    char text[64];
    size_t len = sep_format_double(text, sizeof(text), opts.overlap);
    if (len == 0 || len >= sizeof(text) || strtod(text, NULL) != opts.overlap)
        abort();
    return 0;
}
