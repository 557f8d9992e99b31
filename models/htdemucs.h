/*
 * htdemucs.h - the HTDemucs (Demucs v4) network: hyperparameters, the layer
 * structure derived from them exactly as demucs.htdemucs.HTDemucs.__init__ builds it,
 * and the forward pass written once against the backend operation table.
 *
 * A network is built twice: once at model load against the host tensors (shape
 * checks, a missing tensor fails naming it), and once per engine with each tensor
 * made resident on the engine's backend. The structure holds only pointers.
 */
#ifndef SEP_MODELS_HTDEMUCS_H
#define SEP_MODELS_HTDEMUCS_H

#include <stddef.h>
#include <stdio.h>

#include "models/backend.h"

#define HTD_MAX_DEPTH 8
#define HTD_MAX_DCONV 4
#define HTD_MAX_TLAYERS 16
/* Caps of the hyperparameter check (htd_parse_hparams; models/FORMAT.md lists them). */
#define HTD_MAX_AUDIO_CHANNELS 8
#define HTD_MAX_CHANNELS 16384 /* any layer's channel count, computed in 64 bits */
#define HTD_MAX_GROWTH 16
#define HTD_MAX_NFFT 65536
#define HTD_MAX_KERNEL 64
#define HTD_MAX_STRIDE 64
#define HTD_MAX_CONTEXT 16
#define HTD_MAX_NORM_STARTS 64
#define HTD_MAX_HEADS 64
#define HTD_MAX_SAMPLERATE 768000
#define HTD_MAX_SEGMENT 3600 /* seconds */

/* HTDemucs.__init__ arguments the network depends on (the rest are training-only). */
typedef struct {
    int n_sources;
    int audio_channels;
    int channels;
    int channels_time; /* 0: same as channels */
    double growth;
    int nfft;
    int cac;
    int depth;
    int rewrite;
    double freq_emb; /* weight of the frequency embedding, 0: none */
    double emb_scale;
    int kernel_size;
    int time_stride;
    int stride;
    int context;
    int context_enc;
    int norm_starts;
    int norm_groups;
    int dconv_mode;
    int dconv_depth;
    double dconv_comp;
    int bottom_channels;
    int t_layers;
    char t_emb[16]; /* "sin" or "cape" */
    double t_hidden_scale;
    int t_heads;
    int t_norm_in;
    int t_norm_first;
    int t_norm_out;
    double t_max_period;
    int t_layer_scale;
    int t_gelu;
    double t_weight_pos_embed;
    int t_cape_mean_normalize;
    int t_cross_first;
    int samplerate;
    double segment; /* seconds */
    int use_train_segment;
} htd_hparams;

typedef struct {
    const float *w, *b;
    int cout, cin, kh, kw;
} htd_conv;

typedef struct {
    const float *w, *b; /* NULL when the norm is an identity */
} htd_norm;

typedef struct {
    htd_conv conv1; /* channels -> hidden, kernel 3, dilated */
    htd_norm norm1; /* GroupNorm(1, hidden) */
    htd_conv conv2; /* hidden -> 2 channels, 1x1 */
    htd_norm norm2; /* GroupNorm(1, 2 channels) */
    const float *scale;
    int dilation;
} htd_dconv_layer;

typedef struct {
    int depth;
    htd_dconv_layer layers[HTD_MAX_DCONV];
} htd_dconv;

/* HEncLayer / HDecLayer. */
typedef struct {
    int freq, empty, last, norm, pad, kernel, stride, chin, chout, context;
    int context_freq; /* decoder: 2-D rewrite over frequency too */
    int has_rewrite, has_dconv;
    htd_conv conv; /* encoder conv, or decoder conv_tr (weights [cin][cout][k][1]) */
    htd_norm norm1, norm2;
    htd_conv rewrite;
    htd_dconv dconv;
} htd_layer;

typedef struct {
    const float *in_w, *in_b, *out_w, *out_b; /* in_proj [3C][C], out_proj [C][C] */
} htd_attn;

typedef struct {
    int cross;
    htd_attn attn;
    htd_conv linear1, linear2; /* [out][in] as 1x1 convs */
    htd_norm norm1, norm2, norm3, norm_out;
    const float *gamma1, *gamma2; /* LayerScale, NULL when disabled */
} htd_tlayer;

typedef struct {
    htd_hparams hp;
    int segment_samples; /* training length (exact, from the file's metadata) */
    int n_enc, n_tenc;   /* len(encoder), len(tencoder) == len(decoder), len(tdecoder) */
    htd_layer encoder[HTD_MAX_DEPTH], tencoder[HTD_MAX_DEPTH];
    htd_layer decoder[HTD_MAX_DEPTH], tdecoder[HTD_MAX_DEPTH];
    const float *freq_emb; /* [freqs][channels] embedding weight */
    int freq_emb_rows, freq_emb_dim;
    htd_conv up, down, up_t, down_t; /* bottom_channels 1x1 convs (w NULL: none) */
    int t_dim, t_hidden;
    htd_norm norm_in, norm_in_t;
    htd_tlayer layers[HTD_MAX_TLAYERS], layers_t[HTD_MAX_TLAYERS];
} htd_net;

/* Looks up tensor `name` (without the bag prefix) of the expected shape; returns the
 * pointer to use (host or device), or NULL with a message naming the tensor. */
typedef const float *(*htd_tensor_fn)(void *ud, const char *name, int ndim, const int *shape,
                                      char *err, size_t errlen);

/* Parses a JSON kwargs object (text) into hparams; fails on a missing key or an
 * option this engine does not implement, naming it. Then validates the whole
 * description before anything is allocated: every count >= 1 and under its cap
 * (HTD_MAX_*), the channel progression (growth) computed in 64 bits and capped,
 * norm_groups dividing every GroupNorm'd channel count, the frequency axis mapping
 * onto itself through each encoder/decoder pair, the transformer's sizes. Messages:
 * "hyperparameter NAME = VALUE: RULE" (the converter words them the same). */
int htd_parse_hparams(htd_hparams *hp, const char *kwargs_json, int n_sources, char *err,
                      size_t errlen);
void htd_print_hparams(const htd_hparams *hp, FILE *out);

/* Builds the layer structure of HTDemucs(hp), binding every tensor through `get`. */
int htd_build(htd_net *net, const htd_hparams *hp, int segment_samples, htd_tensor_fn get, void *ud,
              char *err, size_t errlen);

/* ---- forward ---- */

/* Receives named intermediate activations (device pointers) during a forward pass:
 * the names of tests/reference/make_fixtures.py. shape has ndim entries. */
typedef void (*htd_trace_fn)(void *ud, const char *name, const float *dev, int ndim,
                             const int *shape);

typedef struct htd_runtime htd_runtime;

/* Per-engine state of one network: workspace arena and cached tables. */
htd_runtime *htd_runtime_create(const htd_net *net, sep_backend *be, char *err, size_t errlen);
void htd_runtime_free(htd_runtime *rt);
/* Bytes of backend memory the workspace holds now. */
size_t htd_runtime_workspace_bytes(const htd_runtime *rt);

/* mix: device [batch][audio_channels][length], out: device
 * [batch][n_sources][audio_channels][length]. length <= segment_samples when
 * use_train_segment (shorter input is zero-padded then cropped, like the reference). */
int htd_forward(htd_runtime *rt, const float *mix, int batch, int length, float *out,
                htd_trace_fn trace, void *trace_ud, char *err, size_t errlen);

#endif
