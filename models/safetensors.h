/*
 * safetensors.h - read-only, mmap'd safetensors files.
 *
 * The container: an 8-byte little-endian header length N, N bytes of JSON
 * ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}),
 * then the raw tensor bytes. Tensors are used in place, from the mapping; only F32
 * tensors are accepted (models/FORMAT.md). Names are kept sorted for bsearch lookup.
 * st_open refuses duplicate keys, shapes whose element count overflows, data that is
 * not 4-byte aligned from the start of the file, and tensor ranges that overlap or
 * leave bytes of the data area unused.
 */
#ifndef SEP_MODELS_SAFETENSORS_H
#define SEP_MODELS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8

typedef struct {
    char *name;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t count;      /* number of elements */
    const float *data; /* inside the mapping */
    size_t begin, end; /* data_offsets, from the start of the data area */
    int used;          /* set by callers that consume the tensor */
} st_tensor;

typedef struct {
    void *map;
    size_t map_size;
    st_tensor *tensors; /* sorted by name */
    int n_tensors;
    char **meta_keys; /* __metadata__, string to string */
    char **meta_values;
    int n_meta;
} st_file;

/* Maps and parses a file. Returns 0, or -1 with a message in err. */
int st_open(st_file *f, const char *path, char *err, size_t errlen);
void st_close(st_file *f);
st_tensor *st_find(const st_file *f, const char *name);
const char *st_meta(const st_file *f, const char *key); /* NULL when absent */

#endif
