/*
 * sse_clients: many Server-Sent Events clients in one thread (epoll), for
 * bench/events/fanout.py.
 *
 *   sse_clients HOST PORT IDS_FILE N EXPECTED TIMEOUT_S
 *
 * Opens N connections to HOST:PORT, connection i following GET /v1/jobs/{id}/events
 * with id = line (i mod lines) of IDS_FILE; at most 256 connections are being set up
 * at a time (a connection counts as set up once its first event arrived). Prints
 * "CONNECTED n seconds" once all N have their first event, then reads until EXPECTED
 * timed events arrived (or TIMEOUT_S passed) and prints one line:
 *
 *   RESULT samples=S p50_us=.. p99_us=.. max_us=.. events=E closed=C
 *
 * A timed event is one whose job record has "message":"t=<ns>": the publisher wrote
 * its CLOCK_MONOTONIC time (ns) into the job's message right before the publish, and
 * the latency is the client's CLOCK_MONOTONIC at the read minus it (one machine).
 * The body is read line by line (the chunk-size lines of the chunked encoding are
 * lines of their own, each event being written as one chunk).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES 8192
#define SETUP_WINDOW 256

typedef struct {
    int fd;
    int sent; /* request written */
    int closed;
    long events;
    size_t line_len;
    char *line;
    const char *id;
} conn_t;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int64_t *samples;
static long n_samples, cap_samples;
static long total_events, connected, n_closed;

static void on_line(conn_t *c, const char *line, size_t len)
{
    static const char tag[] = "\"message\":\"t=";
    const char *p;

    if (len >= 7 && memcmp(line, "event: ", 7) == 0) {
        if (c->events++ == 0) {
            connected++;
        }
        total_events++;
        return;
    }
    if (len < 6 || memcmp(line, "data: ", 6) != 0) {
        return;
    }
    p = memmem(line, len, tag, sizeof(tag) - 1);
    if (p == NULL) {
        return;
    }
    p += sizeof(tag) - 1;
    int64_t t = strtoll(p, NULL, 10);
    if (t > 0 && n_samples < cap_samples) {
        samples[n_samples++] = now_ns() - t;
    }
}

static void on_data(conn_t *c, const char *buf, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char ch = buf[i];
        if (ch == '\n') {
            size_t len = c->line_len;
            if (len && c->line[len - 1] == '\r') {
                len--;
            }
            on_line(c, c->line, len);
            c->line_len = 0;
        } else if (c->line_len < LINE_MAX_BYTES) {
            c->line[c->line_len++] = ch;
        }
    }
}

static int open_conn(int ep, conn_t *c, struct sockaddr_in *sa)
{
    struct epoll_event ev;
    int one = 1;

    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) {
        perror("socket");
        return -1;
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (struct sockaddr *)sa, sizeof(*sa)) < 0 && errno != EINPROGRESS) {
        perror("connect");
        return -1;
    }
    ev.events = EPOLLIN | EPOLLOUT;
    ev.data.ptr = c;
    return epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: %s HOST PORT IDS_FILE N EXPECTED TIMEOUT_S\n", argv[0]);
        return 2;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &sa.sin_addr);
    long n = atol(argv[4]);
    cap_samples = atol(argv[5]);
    double timeout_s = atof(argv[6]);

    /* job ids, one a line */
    FILE *f = fopen(argv[3], "r");
    if (f == NULL) {
        perror(argv[3]);
        return 2;
    }
    char **ids = NULL;
    size_t n_ids = 0;
    char idbuf[128];
    while (fgets(idbuf, sizeof(idbuf), f)) {
        idbuf[strcspn(idbuf, "\r\n")] = '\0';
        if (idbuf[0]) {
            ids = realloc(ids, (n_ids + 1) * sizeof(char *));
            ids[n_ids++] = strdup(idbuf);
        }
    }
    fclose(f);
    if (n_ids == 0) {
        fprintf(stderr, "no ids\n");
        return 2;
    }

    samples = calloc((size_t)cap_samples + 1, sizeof(int64_t));
    conn_t *conns = calloc((size_t)n, sizeof(conn_t));
    int ep = epoll_create1(0);
    struct epoll_event *evs = calloc(4096, sizeof(struct epoll_event));
    long opened = 0;
    int64_t start = now_ns(), deadline = start + (int64_t)(timeout_s * 1e9);
    int announced = 0;
    char buf[65536];

    for (;;) {
        while (opened < n && opened - connected < SETUP_WINDOW) {
            conn_t *c = &conns[opened];
            c->line = malloc(LINE_MAX_BYTES);
            c->id = ids[opened % n_ids];
            if (open_conn(ep, c, &sa) != 0) {
                return 1;
            }
            opened++;
        }
        if (!announced && connected == n) {
            printf("CONNECTED %ld %.3f\n", n, (now_ns() - start) / 1e9);
            fflush(stdout);
            announced = 1;
        }
        if (announced && n_samples >= cap_samples) {
            break;
        }
        if (now_ns() > deadline) {
            break;
        }
        int k = epoll_wait(ep, evs, 4096, 100);
        for (int i = 0; i < k; i++) {
            conn_t *c = evs[i].data.ptr;
            if ((evs[i].events & EPOLLOUT) && !c->sent) {
                char req[256];
                int len = snprintf(req, sizeof(req),
                                   "GET /v1/jobs/%s/events HTTP/1.1\r\nHost: bench\r\n"
                                   "Accept: text/event-stream\r\n\r\n",
                                   c->id);
                if (write(c->fd, req, (size_t)len) != len) {
                    c->closed = 1;
                    n_closed++;
                    close(c->fd);
                    continue;
                }
                c->sent = 1;
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            }
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                for (;;) {
                    ssize_t r = read(c->fd, buf, sizeof(buf));
                    if (r > 0) {
                        on_data(c, buf, (size_t)r);
                        if ((size_t)r < sizeof(buf)) {
                            break;
                        }
                        continue;
                    }
                    if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
                        break;
                    }
                    if (!c->closed) {
                        c->closed = 1;
                        n_closed++;
                        if (c->events == 0) {
                            connected++; /* never will: do not wait for it */
                        }
                        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                        close(c->fd);
                    }
                    break;
                }
            }
        }
    }
    if (!announced) {
        printf("CONNECTED %ld of %ld (timeout)\n", connected, n);
    }
    qsort(samples, (size_t)n_samples, sizeof(int64_t), cmp_i64);
    long p50 = n_samples ? (long)(samples[n_samples / 2] / 1000) : -1;
    long p99 = n_samples ? (long)(samples[(long)((n_samples - 1) * 0.99)] / 1000) : -1;
    long mx = n_samples ? (long)(samples[n_samples - 1] / 1000) : -1;
    printf("RESULT samples=%ld p50_us=%ld p99_us=%ld max_us=%ld events=%ld closed=%ld\n", n_samples,
           p50, p99, mx, total_events, n_closed);
    fflush(stdout);
    return 0;
}
