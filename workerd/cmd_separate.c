/*
 * cmd_separate.c - `workerd separate`: the offline CLI, demucs.separate's interface and
 * output layout (DIR/{model}/{track}/{stem}.{wav|flac}) on the C engine.
 *
 * The model is loaded and prepared once, then every track goes through
 * sep_separate_file(). A track that fails is reported and skipped; the exit status is
 * 1 when any failed, 2 on a usage error.
 *
 * Every path under -o is built from sanitized components: the model folder (from
 * the weights file name) and each track folder (the input's base name without its
 * extension) are never empty, "." or "..", and hold no '/' (such a name gets a '_'
 * in front); stem names come from the model, which the loader restricts to
 * [A-Za-z0-9_-]. An empty -o is refused, as are two inputs that would share a track
 * folder. -j above the usable cores is lowered to them, with a note.
 */
#include "workerd/commands.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "models/apply.h"
#include "models/engine.h"
#include "models/util.h"
#include "workerd/separate.h"

#define DEFAULT_MODEL "htdemucs"
#define DEFAULT_WEIGHTS_DIR "models/weights"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: workerd separate [options] FILE...\n"
            "\n"
            "Separates each audio FILE into stems with HTDemucs, written as\n"
            "DIR/{model}/{track}/{stem}.wav (demucs' layout). Reads WAV, FLAC, Ogg Vorbis,\n"
            "Opus, MP3 and whatever else libsndfile reads; resamples to the model's rate.\n"
            "\n"
            "options:\n"
            "  -o, --out DIR          output folder (default: separated; not empty)\n"
            "  -n, --name NAME|FILE   model name, looked up as $SEP_MODELS/NAME.safetensors\n"
            "                         (default folder: " DEFAULT_WEIGHTS_DIR
            "), or a .safetensors path\n"
            "                         (default: " DEFAULT_MODEL ")\n"
            "      --two-stems STEM   write STEM and no_STEM (the sum of the others)\n"
            "      --shifts N         random time shifts averaged, 0..10 (default: 1; 0 = off)\n"
            "      --seed N           seed of the shift offsets (default: 0)\n"
            "      --overlap X        overlap between segments, in [0, 0.99) (default: 0.25)\n"
            "      --segment S        segment length in seconds (default: the model's)\n"
            "      --int24            24-bit output\n"
            "      --float32          32-bit float WAV output\n"
            "      --flac             FLAC output (16-bit, or 24-bit with --int24)\n"
            "      --clip-mode MODE   rescale (default), clamp or none\n"
            "  -d, --device DEV       cpu (default) or cuda (a build with the CUDA backend)\n"
            "  -j, --threads N        CPU threads for the engine (default: all cores; more\n"
            "      --jobs N           than the usable cores is lowered to them, with a note)\n"
            "      --batch N          segments per forward pass (default: 1)\n"
            "  -h, --help             this text\n"
            "\n"
            "Each FILE needs its own track folder: two inputs with the same name once the\n"
            "folder and extension are dropped (a/x.wav, b/x.flac) are refused before anything\n"
            "runs (demucs would overwrite the first one's stems). A folder name that would be\n"
            "empty, '.' or '..' (a track '...wav') gets a '_' in front.\n"
            "A track's stems appear together: they are written under temporary names and\n"
            "renamed only when all of them succeeded; on failure none of the new files stays.\n");
}

static int parse_int(const char *s, const char *what, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "workerd separate: %s must be an integer in [%d, %d] (got '%s')\n", what,
                lo, hi, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_double(const char *s, const char *what, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s) {
        fprintf(stderr, "workerd separate: %s must be a number (got '%s')\n", what, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* A single path component made safe to join under -o: '/' becomes '_', and a
 * component that is empty, "." or ".." gets a '_' in front ("_", "_.", "_.."). */
static void sanitize_component(char *name, size_t size)
{
    for (char *p = name; *p; p++)
        if (*p == '/' || (unsigned char)*p < 0x20 || *p == 0x7f) /* no path, no terminal codes */
            *p = '_';
    if (name[0] == '\0' || strcmp(name, ".") == 0 || strcmp(name, "..") == 0) {
        size_t n = strlen(name);
        if (n + 2 <= size) {
            memmove(name + 1, name, n + 1);
            name[0] = '_';
        }
    }
}

/* The track's folder name: file name without its last extension (demucs), sanitized. */
static void track_name(const char *path, char *out, size_t outlen)
{
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/') /* "dir/" names dir */
        len--;
    const char *base = path;
    for (size_t i = 0; i < len; i++)
        if (path[i] == '/')
            base = path + i + 1;
    snprintf(out, outlen, "%.*s", (int)(path + len - base), base);
    char *dot = strrchr(out, '.');
    if (dot && dot != out)
        *dot = '\0';
    sanitize_component(out, outlen);
}

/* CPUs this process may run on. */
static int usable_cores(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

typedef struct {
    int tty;
    const char *track;
    double last;
    int drawn;
} progress_bar;

static int draw_progress(void *user, const char *stage, double fraction)
{
    progress_bar *bar = user;
    if (!bar->tty)
        return 0;
    double t = sep_wall_seconds();
    if (fraction < 1.0 && t - bar->last < 0.1)
        return 0;
    bar->last = t;
    char cells[31];
    int filled = (int)(fraction * 30.0 + 0.5);
    for (int i = 0; i < 30; i++)
        cells[i] = i < filled ? '#' : '.';
    cells[30] = '\0';
    fprintf(stderr, "\r%-24.24s %-8s [%s] %3d%%", bar->track, stage, cells,
            (int)(fraction * 100.0 + 0.5));
    fflush(stderr);
    bar->drawn = 1;
    return 0;
}

static void end_progress(progress_bar *bar)
{
    if (bar->drawn)
        fprintf(stderr, "\r\033[K");
    bar->drawn = 0;
}

int workerd_cmd_separate(int argc, char **argv)
{
    enum {
        OPT_TWO_STEMS = 256,
        OPT_SHIFTS,
        OPT_SEED,
        OPT_OVERLAP,
        OPT_SEGMENT,
        OPT_INT24,
        OPT_FLOAT32,
        OPT_FLAC,
        OPT_CLIP,
        OPT_BATCH,
    };
    static const struct option longopts[] = {
        {"out", required_argument, NULL, 'o'},
        {"name", required_argument, NULL, 'n'},
        {"two-stems", required_argument, NULL, OPT_TWO_STEMS},
        {"shifts", required_argument, NULL, OPT_SHIFTS},
        {"seed", required_argument, NULL, OPT_SEED},
        {"overlap", required_argument, NULL, OPT_OVERLAP},
        {"segment", required_argument, NULL, OPT_SEGMENT},
        {"int24", no_argument, NULL, OPT_INT24},
        {"float32", no_argument, NULL, OPT_FLOAT32},
        {"flac", no_argument, NULL, OPT_FLAC},
        {"clip-mode", required_argument, NULL, OPT_CLIP},
        {"device", required_argument, NULL, 'd'},
        {"threads", required_argument, NULL, 'j'},
        {"jobs", required_argument, NULL, 'j'},
        {"batch", required_argument, NULL, OPT_BATCH},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *out_root = "separated", *name = DEFAULT_MODEL, *two_stems = NULL;
    const char *device = "cpu";
    int int24 = 0, float32 = 0, flac = 0, threads = 0, batch = 1, seed = 0;
    sep_separate_opts so;
    memset(&so, 0, sizeof(so));
    sep_apply_opts_default(&so.apply);
    so.apply.shifts = 1; /* demucs.separate's default */
    so.clip = SEP_CLIP_RESCALE;

    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "o:n:d:j:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'o':
            out_root = optarg;
            break;
        case 'n':
            name = optarg;
            break;
        case OPT_TWO_STEMS:
            two_stems = optarg;
            break;
        case OPT_SHIFTS:
            if (parse_int(optarg, "--shifts", 0, SEP_APPLY_MAX_SHIFTS, &so.apply.shifts))
                return 2;
            break;
        case OPT_SEED:
            if (parse_int(optarg, "--seed", 0, INT_MAX, &seed))
                return 2;
            break;
        case OPT_OVERLAP:
            if (parse_double(optarg, "--overlap", &so.apply.overlap))
                return 2;
            if (!(so.apply.overlap >= 0 && so.apply.overlap < SEP_APPLY_OVERLAP_LIMIT)) {
                fprintf(stderr, "workerd separate: --overlap must be in [0, %g) (got '%s')\n",
                        SEP_APPLY_OVERLAP_LIMIT, optarg);
                return 2;
            }
            break;
        case OPT_SEGMENT:
            if (parse_double(optarg, "--segment", &so.apply.segment))
                return 2;
            if (!(so.apply.segment > 0)) {
                fprintf(stderr, "workerd separate: --segment must be positive\n");
                return 2;
            }
            break;
        case OPT_INT24:
            int24 = 1;
            break;
        case OPT_FLOAT32:
            float32 = 1;
            break;
        case OPT_FLAC:
            flac = 1;
            break;
        case OPT_CLIP:
            if (strcmp(optarg, "rescale") == 0)
                so.clip = SEP_CLIP_RESCALE;
            else if (strcmp(optarg, "clamp") == 0)
                so.clip = SEP_CLIP_CLAMP;
            else if (strcmp(optarg, "none") == 0)
                so.clip = SEP_CLIP_NONE;
            else {
                fprintf(stderr, "workerd separate: --clip-mode must be rescale, clamp or none\n");
                return 2;
            }
            break;
        case 'd':
            if (strcmp(optarg, "cpu") != 0 && strcmp(optarg, "cuda") != 0) {
                fprintf(stderr, "workerd separate: --device must be cpu or cuda (got '%s')\n",
                        optarg);
                return 2;
            }
            device = optarg;
            break;
        case 'j':
            if (parse_int(optarg, "-j/--jobs/--threads", 0, 4096, &threads))
                return 2;
            break;
        case OPT_BATCH:
            if (parse_int(optarg, "--batch", 1, 1024, &batch))
                return 2;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "workerd separate: no input file given\n");
        usage(stderr);
        return 2;
    }
    if (!*out_root) {
        fprintf(stderr, "workerd separate: -o/--out must name a folder (got an empty string)\n");
        return 2;
    }
    /* two inputs with one track folder would overwrite each other's stems */
    for (int i = optind; i < argc; i++) {
        char a[256], b[256];
        track_name(argv[i], a, sizeof(a));
        for (int k = optind; k < i; k++) {
            track_name(argv[k], b, sizeof(b));
            if (strcmp(a, b) == 0) {
                fprintf(stderr,
                        "workerd separate: '%s' and '%s' would both be written to the track "
                        "folder '%s'; rename one or separate them in two runs\n",
                        argv[k], argv[i], a);
                return 2;
            }
        }
    }
    int cores = usable_cores();
    if (threads > cores) {
        fprintf(stderr,
                "workerd separate: note: -j %d is more than the %d usable core%s; using %d\n",
                threads, cores, cores > 1 ? "s" : "", cores);
        threads = cores;
    }
    if (int24 && float32) {
        fprintf(stderr, "workerd separate: --int24 and --float32 exclude each other\n");
        return 2;
    }
    if (flac && float32) {
        fprintf(stderr, "workerd separate: FLAC stores integer samples; use --flac alone "
                        "(16-bit) or with --int24\n");
        return 2;
    }
    so.format = flac      ? (int24 ? SEP_OUT_FLAC24 : SEP_OUT_FLAC16)
                : int24   ? SEP_OUT_WAV24
                : float32 ? SEP_OUT_WAVF32
                          : SEP_OUT_WAV16;
    so.apply.max_batch = batch;
    so.apply.seed = (uint64_t)seed;

    /* Resolve the weights file: a path, or NAME in $SEP_MODELS (or models/weights). */
    char weights[4096], model_dir_name[256];
    int is_path = strchr(name, '/') != NULL || ends_with(name, ".safetensors");
    if (is_path) {
        snprintf(weights, sizeof(weights), "%s", name);
        const char *base = strrchr(name, '/');
        snprintf(model_dir_name, sizeof(model_dir_name), "%s", base ? base + 1 : name);
        if (ends_with(model_dir_name, ".safetensors"))
            model_dir_name[strlen(model_dir_name) - strlen(".safetensors")] = '\0';
    } else {
        const char *dir = getenv("SEP_MODELS");
        if (!dir || !*dir)
            dir = DEFAULT_WEIGHTS_DIR;
        snprintf(weights, sizeof(weights), "%s/%s.safetensors", dir, name);
        snprintf(model_dir_name, sizeof(model_dir_name), "%s", name);
    }
    sanitize_component(model_dir_name, sizeof(model_dir_name));
    struct stat st;
    if (stat(weights, &st) != 0) {
        if (is_path)
            fprintf(stderr, "workerd separate: weights file '%s' not found: %s\n", weights,
                    strerror(errno));
        else
            fprintf(stderr,
                    "workerd separate: model '%s' not found: no weights file '%s'.\n"
                    "  Download and convert it with: models/get-weights %s\n"
                    "  (or point SEP_MODELS at the folder holding %s.safetensors)\n",
                    name, weights, name, name);
        return 1;
    }

    char err[1024];
    sep_model *model = sep_model_load(weights, err, sizeof(err));
    if (!model) {
        fprintf(stderr, "workerd separate: cannot load '%s': %s\n", weights, err);
        return 1;
    }
    const sep_model_info *info = sep_model_get_info(model);
    int status = 1;
    sep_engine *engine = NULL;
    if (two_stems) {
        so.apply.two_stems = sep_model_source_index(model, two_stems);
        if (so.apply.two_stems < 0) {
            char list[SEP_MAX_SOURCES * 34] = "";
            for (int s = 0; s < info->n_sources; s++) {
                strcat(list, s ? ", " : "");
                strcat(list, info->sources[s]);
            }
            fprintf(stderr,
                    "workerd separate: stem \"%s\" is not in model '%s'. STEM must be one of "
                    "%s.\n",
                    two_stems, model_dir_name, list);
            status = 2;
            goto done;
        }
    }
    if (sep_apply_check(model, &so.apply, err, sizeof(err))) {
        fprintf(stderr, "workerd separate: %s\n", err);
        status = 2;
        goto done;
    }
    sep_engine_opts eo = {.device = device, .threads = threads, .max_batch = batch};
    engine = sep_engine_create(model, &eo, err, sizeof(err));
    if (!engine) {
        fprintf(stderr, "workerd separate: cannot prepare the model on '%s': %s\n", device, err);
        goto done;
    }

    char model_dir[4096];
    if (snprintf(model_dir, sizeof(model_dir), "%s/%s", out_root, model_dir_name) >=
        (int)sizeof(model_dir)) {
        fprintf(stderr, "workerd separate: output path too long\n");
        goto done;
    }
    if (sep_mkdirs(model_dir) != 0) {
        fprintf(stderr, "workerd separate: cannot create '%s': %s\n", model_dir, strerror(errno));
        goto done;
    }
    int tty = isatty(STDERR_FILENO);
    if (tty)
        fprintf(stderr, "Separated tracks will be stored in %s\n", model_dir);

    int failures = 0;
    for (int i = optind; i < argc; i++) {
        char track[256], track_dir[4400];
        track_name(argv[i], track, sizeof(track));
        snprintf(track_dir, sizeof(track_dir), "%s/%s", model_dir, track);
        progress_bar bar = {.tty = tty, .track = track};
        sep_separate_result res;
        int rc = sep_separate_file(engine, model, argv[i], track_dir, model_dir, &so, draw_progress,
                                   &bar, &res, err, sizeof(err));
        end_progress(&bar);
        if (rc) {
            fprintf(stderr, "workerd separate: %s\n", err);
            failures++;
            continue;
        }
        if (tty)
            fprintf(stderr,
                    "%s: %.1f s of audio (%d Hz, %d ch) -> %s (%d stems); decode %.2f s, "
                    "separate %.2f s, encode %.2f s\n",
                    argv[i], res.audio_seconds, res.src_samplerate, res.src_channels, track_dir,
                    res.n_stems, res.decode_s, res.separate_s, res.encode_s);
    }
    status = failures ? 1 : 0;
done:
    if (engine)
        sep_engine_free(engine);
    sep_model_free(model);
    return status;
}
