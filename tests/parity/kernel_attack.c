/*
 * kernel_attack.c - stress test of the CPU backend's attention, dconv_tail, Winograd and
 * conv_tr2d_window kernels: shapes at and around every block boundary of the instruction set's
 * kernels (key panels, key tiles, query blocks, head sizes, tile rows, chunks) against ops_test.c's
 * double references, attention with NaN/Inf/huge inputs (must return), and bit-exactness where the
 * engine claims it: a batch gives the same bits as single runs (every op), and attention and
 * dconv_tail give the same bits for any thread count (1, 2, 3, 7), and a transposed convolution's
 * window equals that part of its full output bit for bit. Convolutions (im2col and Winograd) split
 * their work by the thread count: differences there are printed as NOTE lines, not failures.
 *
 *   kernel_attack [--threads N] [--quick] [--fuzz COUNT SEED]
 *
 * --fuzz runs COUNT random shapes of the three ops (seeded) instead. Prints
 * CASES: N passed, N failed, 0 skipped.
 */
#define main ops_test_main
#include "tests/parity/ops_test.c"
#undef main

static sep_backend *make_be(int threads)
{
    char err[256];
    sep_backend *b = sep_cpu_backend_create(threads, err, sizeof(err));
    if (!b) {
        printf("FAIL backend: %s\n", err);
        exit(1);
    }
    return b;
}

/* ---- bit comparisons across backends ---- */
static int bitfails, bitchecks;
static void cmp_bits_claimed(const char *what, const float *a, const float *b, size_t n,
                             int claimed)
{
    size_t diff = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], 4)) {
            if (!diff)
                first = i;
            diff++;
        }
    if (diff)
        printf("%s %s: %zu of %zu differ (first %zu: %.9g vs %.9g)\n", claimed ? "BITDIFF" : "NOTE",
               what, diff, n, first, a[first], b[first]);
    if (claimed) {
        bitchecks++;
        bitfails += diff != 0;
    }
}

static void cmp_bits(const char *what, const float *a, const float *b, size_t n)
{
    cmp_bits_claimed(what, a, b, n, 1);
}

static float *run_attention(sep_backend *b, sep_attention_desc d, const float *q, const float *k,
                            const float *v)
{
    size_t no = (size_t)d.batch * d.nq * d.ldo;
    float *y = calloc(no + 16, sizeof(float));
    b->ops->attention(b, &d, y, q, k, v);
    return y;
}

static void attention_bits(sep_backend **bes, int nbe, sep_attention_desc d)
{
    size_t nq = (size_t)d.batch * d.nq * d.ldq, nk = (size_t)d.batch * d.nk * d.ldk;
    size_t nv = (size_t)d.batch * d.nk * d.ldv, no = (size_t)d.batch * d.nq * d.ldo;
    float *q = hrand(nq, 2), *k = hrand(nk, 2), *v = hrand(nv, 1);
    char name[200];
    snprintf(name, sizeof(name), "attention b%d h%d %dx%d hd%d", d.batch, d.heads, d.nq, d.nk,
             d.head_dim);
    float *y0 = run_attention(bes[0], d, q, k, v);
    for (int i = 1; i < nbe; i++) {
        float *y = run_attention(bes[i], d, q, k, v);
        char w[256];
        snprintf(w, sizeof(w), "%s threads be%d", name, i);
        cmp_bits(w, y0, y, no);
        free(y);
    }
    /* batch item by item */
    sep_attention_desc s = d;
    s.batch = 1;
    for (int bi = 0; bi < d.batch; bi++) {
        float *y = run_attention(bes[1], s, q + (size_t)bi * d.nq * d.ldq,
                                 k + (size_t)bi * d.nk * d.ldk, v + (size_t)bi * d.nk * d.ldv);
        char w[256];
        snprintf(w, sizeof(w), "%s batch item %d", name, bi);
        cmp_bits(w, y0 + (size_t)bi * d.nq * d.ldo, y, (size_t)d.nq * d.ldo);
        free(y);
    }
    free(y0);
    free(q);
    free(k);
    free(v);
}

static void conv_bits(sep_backend **bes, int nbe, sep_conv2d_desc d)
{
    sep_conv2d_finish(&d);
    int glu = d.act == SEP_ACT_GLU, cy = glu ? d.cout / 2 : d.cout;
    size_t ni = (size_t)d.n * d.cin * d.h * d.w, no = (size_t)d.n * cy * d.ho * d.wo;
    size_t nw = (size_t)d.cout * d.cin * 9;
    float *x = hrand(ni, 1), *w = hrand(nw, 0.1f), *bb = hrand(d.cout, 0.5f);
    float *y0 = calloc(no + 16, 4);
    bes[0]->ops->conv2d(bes[0], &d, y0, x, w, bb);
    char name[200];
    snprintf(name, sizeof(name), "conv n%d cin%d cout%d %dx%d act%d", d.n, d.cin, d.cout, d.h, d.w,
             d.act);
    for (int i = 1; i < nbe; i++) {
        float *y = calloc(no + 16, 4);
        bes[i]->ops->conv2d(bes[i], &d, y, x, w, bb);
        char wname[256];
        snprintf(wname, sizeof(wname), "%s threads be%d", name, i);
        cmp_bits_claimed(wname, y0, y, no, 0);
        free(y);
    }
    sep_conv2d_desc s = d;
    s.n = 1;
    size_t pi = (size_t)d.cin * d.h * d.w, po = (size_t)cy * d.ho * d.wo;
    for (int bi = 0; bi < d.n; bi++) {
        float *y = calloc(po + 16, 4);
        bes[0]->ops->conv2d(bes[0], &s, y, x + bi * pi, w, bb);
        char wname[256];
        snprintf(wname, sizeof(wname), "%s batch item %d", name, bi);
        cmp_bits(wname, y0 + bi * po, y, po);
        free(y);
    }
    free(x);
    free(w);
    free(bb);
    free(y0);
}

static void tail_bits(sep_backend **bes, int nbe, int n, int c, int hid, int h, int w)
{
    size_t plane = (size_t)h * w, cx = (size_t)n * c * plane, cz = (size_t)n * hid * plane;
    float *x = hrand(cx, 1), *z = hrand(cz, 1), *w2 = hrand(2 * c * hid, 1),
          *b2 = hrand(2 * c, 0.5f), *g = hrand(2 * c, 1), *bt = hrand(2 * c, 1), *sc = hrand(c, 1);
    float *x0 = malloc(cx * 4 + 16);
    memcpy(x0, x, cx * 4);
    int done = bes[0]->ops->dconv_tail(bes[0], x0, z, w2, b2, g, bt, sc, n, c, hid, h, w, 1e-5f);
    char name[200];
    snprintf(name, sizeof(name), "dconv_tail n%d c%d hid%d %dx%d", n, c, hid, h, w);
    for (int i = 1; i < nbe && done; i++) {
        float *xi = malloc(cx * 4 + 16);
        memcpy(xi, x, cx * 4);
        bes[i]->ops->dconv_tail(bes[i], xi, z, w2, b2, g, bt, sc, n, c, hid, h, w, 1e-5f);
        char wname[256];
        snprintf(wname, sizeof(wname), "%s threads be%d", name, i);
        cmp_bits(wname, x0, xi, cx);
        free(xi);
    }
    for (int bi = 0; bi < n && done; bi++) {
        float *xi = malloc(c * plane * 4 + 16);
        memcpy(xi, x + bi * c * plane, c * plane * 4);
        bes[1]->ops->dconv_tail(bes[1], xi, z + bi * hid * plane, w2, b2, g, bt, sc, 1, c, hid, h,
                                w, 1e-5f);
        char wname[256];
        snprintf(wname, sizeof(wname), "%s batch item %d", name, bi);
        cmp_bits(wname, x0 + bi * c * plane, xi, c * plane);
        free(xi);
    }
    free(x);
    free(x0);
    free(z);
    free(w2);
    free(b2);
    free(g);
    free(bt);
    free(sc);
}

/* conv_tr2d_window against the same window of conv_tr2d's full output: the same bits
 * (the same GEMM chunks, the same sums in the same order) */
static void window_bits(sep_conv_tr2d_desc d, int top, int oh, int left, int ow)
{
    if (!be->ops->conv_tr2d_window)
        return;
    sep_conv_tr2d_finish(&d);
    size_t ni = (size_t)d.n * d.cin * d.h * d.w, nw = (size_t)d.cin * d.cout * d.kh * d.kw;
    size_t nfull = (size_t)d.n * d.cout * d.ho * d.wo, nwin = (size_t)d.n * d.cout * oh * ow;
    float *x = hrand(ni, 1.0f), *w = hrand(nw, 0.3f), *b = hrand((size_t)d.cout, 0.5f);
    float *full = malloc(nfull * 4 + 16), *win = malloc(nwin * 4 + 16),
          *ref = malloc(nwin * 4 + 16);
    be->ops->conv_tr2d(be, &d, full, x, w, b);
    be->ops->conv_tr2d_window(be, &d, top, oh, left, ow, win, x, w, b);
    for (int nc = 0; nc < d.n * d.cout; nc++)
        for (int r = 0; r < oh; r++)
            memcpy(ref + ((size_t)nc * oh + r) * ow,
                   full + ((size_t)nc * d.ho + top + r) * d.wo + left, (size_t)ow * 4);
    char name[200];
    snprintf(name, sizeof(name),
             "conv_tr window n%d cin%d cout%d %dx%d k%dx%d s%dx%d [%d+%d, %d+%d]", d.n, d.cin,
             d.cout, d.h, d.w, d.kh, d.kw, d.sh, d.sw, top, oh, left, ow);
    cmp_bits(name, ref, win, nwin);
    free(x);
    free(w);
    free(b);
    free(full);
    free(win);
    free(ref);
}

/* NaN / Inf / huge in attention: must return (no crash, no hang); prints a summary */
static void attention_special(float val, int where, int hd)
{
    sep_attention_desc d = {1, 2, 40, 300, hd, 2 * hd, 2 * hd, 2 * hd, 2 * hd};
    size_t n = (size_t)d.nq * d.ldq, nk = (size_t)d.nk * d.ldk;
    float *q = hrand(n, 1), *k = hrand(nk, 1), *v = hrand(nk, 1);
    if (where == 0)
        q[5] = val;
    else if (where == 1)
        k[7 * d.ldk + 3] = val;
    else
        v[9 * d.ldv + 1] = val;
    float *y = run_attention(be, d, q, k, v);
    size_t nan = 0, inf = 0;
    for (size_t i = 0; i < (size_t)d.nq * d.ldo; i++) {
        nan += isnan(y[i]);
        inf += isinf(y[i]) != 0;
    }
    printf("SPECIAL attention hd%d %g in %s: %zu NaN, %zu Inf of %zu\n", hd, val,
           where == 0   ? "q"
           : where == 1 ? "k"
                        : "v",
           nan, inf, (size_t)d.nq * d.ldo);
    free(q);
    free(k);
    free(v);
    free(y);
}

int main(int argc, char **argv)
{
    int threads = 2, quick = 0, fuzz = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick"))
            quick = 1;
        else if (!strcmp(argv[i], "--fuzz") && i + 2 < argc) {
            fuzz = atoi(argv[++i]);
            rng = (unsigned)atoi(argv[++i]);
        }
    }
    be = make_be(threads);
    char err[256];
    const cpu_kernels *ks = sep_cpu_kernels(err, sizeof(err));
    int TBk = ks->t_block, KT = ks->attn_ktile;
    printf("kernels %s tb %d ktile %d threads %d winograd %s\n", ks->name, TBk, KT, threads,
           getenv("SEP_CPU_WINOGRAD") ? getenv("SEP_CPU_WINOGRAD") : "default");
    /* attention vs reference */
    int nks[] = {1, 2, TBk - 1, TBk, TBk + 1, KT - 1, KT, KT + 1, 2 * KT + TBk - 1, 3 * KT};
    int nqs[] = {1, 2, 15, 16, 17, 127, 128, 129, 300};
    int hds[] = {8, 16, 24, 32, 48, 64, 80, 96};
    char name[200];
    for (int it = 0; it < fuzz; it++) {
        int kind = (int)(rng >> 3) % 3;
        frand();
        unsigned r = rng;
        if (kind == 0) {
            int hd = (int)(1 + r % 12) * 8, heads = 1 + (int)(r >> 8) % 4;
            int nq = 1 + (int)(frand() * 0.5f + 0.5f) * 0 + (int)((rng >> 9) % 400);
            frand();
            int nk = 1 + (int)((rng >> 9) % 800);
            frand();
            int pad = (int)((rng >> 12) % 7);
            sep_attention_desc d = {1 + (int)((rng >> 20) % 2),
                                    heads,
                                    nq,
                                    nk,
                                    hd,
                                    heads * hd + pad,
                                    heads * hd + (pad * 3) % 5,
                                    heads * hd + (pad * 5) % 7,
                                    heads * hd + pad / 2};
            snprintf(name, sizeof(name), "fuzz att b%d h%d nq%d nk%d hd%d pad%d", d.batch, heads,
                     nq, nk, hd, pad);
            test_attention(name, d, 1.0f + (float)(rng % 5), 0);
        } else if (kind == 1) {
            int cin = 32 + (int)(r % 60), cout = 1 + (int)((r >> 8) % 40);
            frand();
            int h = 1 + (int)((rng >> 9) % 40), w = 1 + (int)((rng >> 17) % 70);
            int act = (int)((rng >> 25) % 3);
            act = act == 0 ? SEP_ACT_NONE : act == 1 ? SEP_ACT_GELU : SEP_ACT_GLU;
            if (act == SEP_ACT_GLU)
                cout = 2 * ((cout + 1) / 2);
            sep_conv2d_desc d = {
                1 + (int)(r >> 29) % 2, cin, h, w, cout, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, act};
            snprintf(name, sizeof(name), "fuzz wino n%d cin%d %dx%d cout%d act%d", d.n, cin, h, w,
                     cout, act);
            test_conv(name, d);
        } else {
            int c = 1 + (int)(r % 200), hid = 1 + (int)((r >> 8) % 24);
            frand();
            int h = 1 + (int)((rng >> 9) % 6), w = 1 + (int)((rng >> 15) % 3000);
            snprintf(name, sizeof(name), "fuzz tail n%d c%d hid%d %dx%d", 1 + (int)(r >> 30), c,
                     hid, h, w);
            test_dconv_tail(name, 1 + (int)(r >> 30), c, hid, h, w);
        }
    }
    if (fuzz) {
        be->ops->destroy(be);
        printf("%s: %d of %d fuzz checks failed\n", failures ? "FAIL" : "PASS", failures, checks);
        printf("CASES: %d passed, %d failed, 0 skipped\n", checks - failures, failures);
        return failures != 0;
    }
    for (size_t a = 0; a < sizeof(nks) / sizeof(nks[0]); a++)
        for (size_t b = 0; b < sizeof(nqs) / sizeof(nqs[0]); b++) {
            if (quick && (a + b) % 3)
                continue;
            int hd = hds[(a * 3 + b) % 8];
            int heads = 1 + (int)((a + b) % 3);
            int ld = heads * hd + (int)(a % 3) * 3;
            sep_attention_desc d = {1 + (int)(b % 2), heads,  nqs[b],        nks[a], hd, ld,
                                    ld + 5,           ld + 1, heads * hd + 7};
            snprintf(name, sizeof(name), "att b%d h%d nq%d nk%d hd%d", d.batch, heads, nqs[b],
                     nks[a], hd);
            test_attention(name, d, 2.0f, 0);
        }
    for (size_t i = 0; i < sizeof(hds) / sizeof(hds[0]); i++) {
        int hd = hds[i];
        sep_attention_desc d = {2, 3, 33, KT + 3, hd, 3 * hd, 3 * hd, 3 * hd, 3 * hd};
        snprintf(name, sizeof(name), "att b2 h3 33x%d hd%d peaked", KT + 3, hd);
        test_attention(name, d, 6.0f, 0);
    }
    /* Winograd vs reference */
    struct {
        int n, cin, h, w, cout, act;
    } wc[] = {
        {1, 32, 1, 1, 4, SEP_ACT_NONE},     {1, 32, 1, 2, 4, SEP_ACT_NONE},
        {1, 32, 2, 1, 4, SEP_ACT_GELU},     {1, 32, 2, 2, 6, SEP_ACT_GLU},
        {1, 32, 3, 3, 5, SEP_ACT_NONE},     {2, 33, 3, 1, 7, SEP_ACT_NONE},
        {3, 32, 5, 7, 10, SEP_ACT_GLU},     {1, 40, 1, 37, 3, SEP_ACT_NONE},
        {1, 32, 37, 1, 3, SEP_ACT_GELU},    {1, 48, 31, 33, 9, SEP_ACT_NONE},
        {2, 64, 17, 130, 2, SEP_ACT_GLU},   {1, 32, 4, 4, 300, SEP_ACT_NONE},
        {1, 35, 61, 3, 1, SEP_ACT_NONE},    {1, 128, 9, 300, 16, SEP_ACT_NONE},
        {1, 32, 101, 101, 2, SEP_ACT_NONE}, {1, 96, 2, 513, 24, SEP_ACT_GELU},
        {1, 384, 8, 40, 48, SEP_ACT_NONE},  {1, 256, 3, 3, 2, SEP_ACT_GLU},
        {2, 768, 4, 9, 6, SEP_ACT_GELU},
    };
    for (size_t i = 0; i < sizeof(wc) / sizeof(wc[0]); i++) {
        sep_conv2d_desc d = {wc[i].n, wc[i].cin, wc[i].h, wc[i].w, wc[i].cout, 3, 3, 1,
                             1,       1,         1,       1,       1,          1, 1, wc[i].act};
        snprintf(name, sizeof(name), "wino n%d cin%d %dx%d cout%d act%d", wc[i].n, wc[i].cin,
                 wc[i].h, wc[i].w, wc[i].cout, wc[i].act);
        test_conv(name, d);
    }
    /* dconv_tail vs reference */
    struct {
        int n, c, hid, h, w;
    } tc[] = {{1, 1, 1, 1, 1},       {1, 3, 1, 1, 1},      {2, 5, 8, 3, 1},
              {1, 7, 4, 1, TBk - 1}, {1, 7, 4, 1, TBk},    {1, 7, 4, 1, TBk + 1},
              {3, 9, 7, 5, 23},      {1, 48, 8, 1, 20000}, {1, 1, 8, 1, 9000},
              {1, 513, 2, 2, 100},   {2, 24, 5, 200, 3},   {1, 48, 8, 2, 341},
              {1, 2000, 3, 1, 40},   {1, 192, 24, 3, 336}, {2, 96, 12, 2, 341},
              {1, 96, 12, 1, 21499}, {1, 150, 20, 1, 47}};
    for (size_t i = 0; i < sizeof(tc) / sizeof(tc[0]); i++) {
        snprintf(name, sizeof(name), "tail n%d c%d hid%d %dx%d", tc[i].n, tc[i].c, tc[i].hid,
                 tc[i].h, tc[i].w);
        test_dconv_tail(name, tc[i].n, tc[i].c, tc[i].hid, tc[i].h, tc[i].w);
    }
    /* special values */
    float sv[] = {NAN, INFINITY, -INFINITY, 1e30f};
    for (int i = 0; i < 4; i++)
        for (int w = 0; w < 3; w++)
            for (int hd = 16; hd <= 20; hd += 4)
                attention_special(sv[i], w, hd);
    /* bits across thread counts and batch splitting */
    int tcs[] = {1, 2, 3, 7};
    sep_backend *bes[4];
    for (int i = 0; i < 4; i++)
        bes[i] = make_be(tcs[i]);
    sep_attention_desc ad[] = {
        {3, 2, 300, 700, 32, 64, 64, 64, 64},
        {2, 5, 129, 257, 48, 240, 245, 241, 250},
        {2, 1, 17, 1, 16, 16, 16, 16, 16},
        {2, 2, 100, 90, 20, 40, 40, 40, 40},
    };
    for (size_t i = 0; i < sizeof(ad) / sizeof(ad[0]); i++)
        attention_bits(bes, 4, ad[i]);
    sep_conv2d_desc cd[] = {
        {3, 32, 40, 60, 20, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, SEP_ACT_NONE},
        {2, 72, 9, 37, 30, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, SEP_ACT_GLU},
        {2, 48, 64, 130, 48, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, SEP_ACT_GELU},
        {2, 32, 1, 700, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, SEP_ACT_NONE},
    };
    for (size_t i = 0; i < sizeof(cd) / sizeof(cd[0]); i++)
        conv_bits(bes, 4, cd[i]);
    tail_bits(bes, 4, 2, 6, 3, 5, 70);
    tail_bits(bes, 4, 2, 48, 6, 1, 5000);
    tail_bits(bes, 4, 3, 5, 8, 4, 9);
    tail_bits(bes, 4, 2, 192, 24, 3, 336);
    /* the decoders' crops (freq: rows, time: columns) and odd windows: one row or column,
     * the whole output, windows cutting the chunks' overlaps, several batch items */
    {
        sep_conv_tr2d_desc wf = {2, 24, 37, 19, 8, 8, 1, 4, 1};
        sep_conv_tr2d_desc wt = {1, 40, 1, 3001, 8, 1, 8, 1, 4};
        sep_conv_tr2d_desc w2 = {1, 12, 9, 11, 5, 3, 5, 2, 3};
        sep_conv_tr2d_finish(&wf);
        sep_conv_tr2d_finish(&wt);
        sep_conv_tr2d_finish(&w2);
        window_bits(wf, 2, wf.ho - 4, 0, wf.wo);
        window_bits(wf, 0, wf.ho, 0, wf.wo);
        window_bits(wf, wf.ho - 1, 1, 3, 1);
        window_bits(wf, 5, 17, 2, 9);
        window_bits(wt, 0, 1, 2, wt.wo - 2 - 5);
        window_bits(wt, 0, 1, 0, 1);
        window_bits(wt, 0, 1, 4000, wt.wo - 4000);
        window_bits(w2, 1, w2.ho - 3, 2, w2.wo - 7);
        window_bits(w2, 3, 2, 1, 1);
    }
    for (int i = 0; i < 4; i++)
        bes[i]->ops->destroy(bes[i]);
    be->ops->destroy(be);
    printf("%s: %d of %d checks failed, %d of %d bit comparisons differ\n",
           failures || bitfails ? "FAIL" : "PASS", failures, checks, bitfails, bitchecks);
    printf("CASES: %d passed, %d failed, 0 skipped\n", checks + bitchecks - failures - bitfails,
           failures + bitfails);
    return failures || bitfails;
}
