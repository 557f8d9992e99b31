/*
 * safetensors.c - mmap a safetensors file and index its tensors (see safetensors.h).
 *
 * The header is parsed with jansson (duplicate keys refused); every tensor's offsets
 * are checked against the file size and its shape (the element count computed with
 * overflow checks), its data must be 4-byte aligned from the start of the file (so
 * the floats can be read in place on any CPU), and the tensors must tile the data
 * area exactly: no overlaps, no aliases, no holes, nothing after the last one. A
 * truncated or inconsistent file fails at open time with a message naming the
 * tensor, never later with a wild or misaligned read.
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

static int range_cmp(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* The tensors' byte ranges, in file order, must tile [0, data_size) exactly. */
static int check_layout(st_file *f, size_t data_size, char *err, size_t errlen)
{
    int n = f->n_tensors;
    const st_tensor **order = malloc(sizeof(*order) * (size_t)(n ? n : 1));
    if (!order) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int i = 0; i < n; i++)
        order[i] = &f->tensors[i];
    qsort(order, (size_t)n, sizeof(*order), range_cmp);
    size_t pos = 0;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const st_tensor *t = order[i];
        if (t->begin < pos) {
            snprintf(err, errlen, "tensor %s: data_offsets [%zu, %zu] overlap tensor %s", t->name,
                     t->begin, t->end, order[i - 1]->name);
            rc = -1;
        } else if (t->begin > pos) {
            snprintf(err, errlen,
                     "tensor %s: data_offsets [%zu, %zu] leave a hole of %zu bytes before it",
                     t->name, t->begin, t->end, t->begin - pos);
            rc = -1;
        }
        pos = t->end;
    }
    if (rc == 0 && pos != data_size) {
        snprintf(err, errlen, "%zu bytes after the last tensor's data belong to no tensor",
                 data_size - pos);
        rc = -1;
    }
    free(order);
    return rc;
}

static int parse_tensor(st_tensor *t, const char *name, json_t *desc, const uint8_t *data,
                        size_t data_start, size_t data_size, char *err, size_t errlen)
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
        /* the byte count must fit the file, so any product past it is an error */
        size_t c;
        if (__builtin_mul_overflow(t->count, (size_t)t->shape[i], &c) ||
            c > SIZE_MAX / sizeof(float)) {
            snprintf(err, errlen, "tensor %s: the shape's element count overflows", name);
            return -1;
        }
        t->count = c;
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
    if (((uintptr_t)data + (uintptr_t)begin) % sizeof(float) != 0) {
        snprintf(err, errlen,
                 "tensor %s: data at byte %lld of the file is not 4-byte aligned (header "
                 "length + 8 + begin must be a multiple of 4)",
                 name, (long long)(data_start + (size_t)begin));
        return -1;
    }
    t->begin = (size_t)begin;
    t->end = (size_t)end;
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
    json_t *root = json_loadb((const char *)bytes + 8, hlen, JSON_REJECT_DUPLICATES, &jerr);
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
            if (!json_is_object(value)) {
                snprintf(err, errlen, "%s: __metadata__ is not an object", path);
                rc = -1;
                break;
            }
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
                if (!f->meta_keys[f->n_meta - 1] || !f->meta_values[f->n_meta - 1]) {
                    snprintf(err, errlen, "%s: out of memory", path);
                    rc = -1;
                    break;
                }
            }
            continue;
        }
        char sub[384];
        if (parse_tensor(&f->tensors[f->n_tensors], key, value, data, 8 + (size_t)hlen, data_size,
                         sub, sizeof(sub))) {
            snprintf(err, errlen, "%s: %s", path, sub);
            rc = -1;
        } else {
            f->n_tensors++;
        }
    }
    json_decref(root);
    if (rc == 0) {
        char sub[384];
        if (check_layout(f, data_size, sub, sizeof(sub))) {
            snprintf(err, errlen, "%s: %s", path, sub);
            rc = -1;
        }
    }
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
