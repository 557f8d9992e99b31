/*
 * safetensors.c - mmap a safetensors file and index its tensors (see safetensors.h).
 *
 * The header is parsed with jansson; every tensor's offsets are checked against the
 * file size and its shape, so a truncated or inconsistent file fails at open time
 * with a message naming the tensor, never later with a wild read.
 */
#include "models/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int tensor_cmp(const void *a, const void *b)
{
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int parse_tensor(st_tensor *t, const char *name, json_t *desc, const uint8_t *data,
                        size_t data_size, char *err, size_t errlen)
{
    json_t *dtype = json_object_get(desc, "dtype");
    json_t *shape = json_object_get(desc, "shape");
    json_t *offs = json_object_get(desc, "data_offsets");
    if (!json_is_string(dtype) || !json_is_array(shape) || !json_is_array(offs) ||
        json_array_size(offs) != 2) {
        snprintf(err, errlen, "tensor %s: malformed header entry", name);
        return -1;
    }
    if (strcmp(json_string_value(dtype), "F32") != 0) {
        snprintf(err, errlen, "tensor %s: dtype %s, only F32 is supported", name,
                 json_string_value(dtype));
        return -1;
    }
    size_t nd = json_array_size(shape);
    if (nd > ST_MAX_DIMS) {
        snprintf(err, errlen, "tensor %s: %zu dimensions", name, nd);
        return -1;
    }
    t->ndim = (int)nd;
    t->count = 1;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(shape, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0) {
            snprintf(err, errlen, "tensor %s: bad shape", name);
            return -1;
        }
        t->shape[i] = json_integer_value(d);
        t->count *= (size_t)t->shape[i];
    }
    json_t *b = json_array_get(offs, 0), *e = json_array_get(offs, 1);
    if (!json_is_integer(b) || !json_is_integer(e)) {
        snprintf(err, errlen, "tensor %s: bad data_offsets", name);
        return -1;
    }
    json_int_t begin = json_integer_value(b), end = json_integer_value(e);
    if (begin < 0 || end < begin || (size_t)end > data_size ||
        (size_t)(end - begin) != t->count * sizeof(float)) {
        snprintf(err, errlen,
                 "tensor %s: data_offsets [%lld, %lld] do not match its shape or "
                 "the file size",
                 name, (long long)begin, (long long)end);
        return -1;
    }
    if (begin % 4 != 0) {
        snprintf(err, errlen, "tensor %s: data not 4-byte aligned", name);
        return -1;
    }
    t->data = (const float *)(data + begin);
    t->name = strdup(name);
    return t->name ? 0 : -1;
}

int st_open(st_file *f, const char *path, char *err, size_t errlen)
{
    memset(f, 0, sizeof(*f));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || sb.st_size < 8) {
        snprintf(err, errlen, "%s: not a safetensors file (too short)", path);
        close(fd);
        return -1;
    }
    f->map_size = (size_t)sb.st_size;
    f->map = mmap(NULL, f->map_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        snprintf(err, errlen, "%s: mmap: %s", path, strerror(errno));
        return -1;
    }
    const uint8_t *bytes = f->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | bytes[i];
    if (hlen > f->map_size - 8) {
        snprintf(err, errlen, "%s: header length %llu exceeds the file", path,
                 (unsigned long long)hlen);
        st_close(f);
        return -1;
    }
    json_error_t jerr;
    json_t *root = json_loadb((const char *)bytes + 8, hlen, 0, &jerr);
    if (!root || !json_is_object(root)) {
        snprintf(err, errlen, "%s: header JSON: %s", path, root ? "not an object" : jerr.text);
        json_decref(root);
        st_close(f);
        return -1;
    }
    const uint8_t *data = bytes + 8 + hlen;
    size_t data_size = f->map_size - 8 - hlen;
    size_t n = json_object_size(root);
    f->tensors = calloc(n ? n : 1, sizeof(st_tensor));
    const char *key;
    json_t *value;
    int rc = f->tensors ? 0 : -1;
    json_object_foreach(root, key, value)
    {
        if (rc != 0)
            break;
        if (strcmp(key, "__metadata__") == 0) {
            size_t nm = json_object_size(value);
            f->meta_keys = calloc(nm ? nm : 1, sizeof(char *));
            f->meta_values = calloc(nm ? nm : 1, sizeof(char *));
            const char *mk;
            json_t *mv;
            json_object_foreach(value, mk, mv)
            {
                if (!json_is_string(mv)) {
                    snprintf(err, errlen, "%s: metadata %s is not a string", path, mk);
                    rc = -1;
                    break;
                }
                f->meta_keys[f->n_meta] = strdup(mk);
                f->meta_values[f->n_meta] = strdup(json_string_value(mv));
                f->n_meta++;
            }
            continue;
        }
        char sub[384];
        if (parse_tensor(&f->tensors[f->n_tensors], key, value, data, data_size, sub,
                         sizeof(sub))) {
            snprintf(err, errlen, "%s: %s", path, sub);
            rc = -1;
        } else {
            f->n_tensors++;
        }
    }
    json_decref(root);
    if (rc != 0) {
        st_close(f);
        return -1;
    }
    qsort(f->tensors, (size_t)f->n_tensors, sizeof(st_tensor), tensor_cmp);
    return 0;
}

void st_close(st_file *f)
{
    for (int i = 0; i < f->n_tensors; i++)
        free(f->tensors[i].name);
    free(f->tensors);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    if (f->map)
        munmap(f->map, f->map_size);
    memset(f, 0, sizeof(*f));
}

st_tensor *st_find(const st_file *f, const char *name)
{
    st_tensor key = {.name = (char *)name};
    return bsearch(&key, f->tensors, (size_t)f->n_tensors, sizeof(st_tensor), tensor_cmp);
}

const char *st_meta(const st_file *f, const char *key)
{
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0)
            return f->meta_values[i];
    return NULL;
}
