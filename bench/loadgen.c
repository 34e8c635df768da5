/* Closed-loop load generator for a line-JSON server on a Unix socket, in C.

       cc -O2 -o loadgen bench/loadgen.c
       ./loadgen --socket PATH [--event system:health] [--data '{}'] [--connections 16]
                 [--depth 1] [--burst 0|1] [--warmup 1] [--duration 5] [--cpu N]
                 [--server-pid PID] [--key-per-connection 0|1]

   The same measurement as bench/loadgen.py, written so that the client is never the bottleneck:
   a Python client saturates near 120k requests/s and hides the gap between two fast servers.
   Each connection keeps `depth` requests in flight; every reply that arrives is answered by a
   new request (the new requests of one read go out in one write). With --burst 1 a connection
   instead sends `depth` requests in one write and waits for all their replies before the next
   burst, so the server always reads whole bursts: its CPU per request at a fixed batch size,
   which a closed loop hides (a slower server there gets bigger batches, each request fewer
   system calls, so both servers drift towards the same rate). Latency is send-to-reply per
   request, matched by correlation id ("<connection>-<number>"). Only replies arriving inside
   the measuring window count. Prints one JSON object with the keys loadgen.py prints, and
   with --server-pid also the server's minor page faults per request: memory the server's
   allocator handed back to the kernel and touched again (bench/README.md). With
   --key-per-connection 1 each connection's data (a JSON object) also holds "key": "c<index>",
   so that writes of different connections go to different keys.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define READ_CHUNK (1 << 16)
#define SENT_SLOTS (1 << 16) /* a request may be outstanding while 65535 later ones are sent */

typedef struct {
    int fd, index;
    uint64_t next_id;
    int in_flight;
    uint64_t *sent_at;      /* send time (ns) by id % SENT_SLOTS */
    char *in;               /* unparsed input: at most one partial line */
    size_t in_len, in_cap;
    char *out;              /* requests not yet accepted by the socket */
    size_t out_len, out_cap;
    int want_write;
    char *data;             /* this connection's request data */
} Conn;

static const char *event = "system:health";
static const char *data = "{}";
static int measuring = 0;
static int burst = 0, burst_size = 1;
static int key_per_connection = 0;
static uint64_t *latencies;
static size_t latencies_len, latencies_cap;
static long errors, unmatched;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double process_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A process's CPU seconds (utime + stime) and minor page faults, from /proc/PID/stat. */
typedef struct { double cpu_s; unsigned long minor_faults; } Usage;

static Usage usage_of(long pid) {
    Usage u = {0.0, 0};
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return u;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return u;
    unsigned long minflt = 0, utime = 0, stime = 0;
    /* fields after ")": state(3) ... minflt is field 10, utime 14, stime 15 */
    sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %lu %*u %*u %*u %lu %lu", &minflt, &utime,
           &stime);
    u.cpu_s = (utime + stime) / (double)sysconf(_SC_CLK_TCK);
    u.minor_faults = minflt;
    return u;
}

static double machine_busy_s(void) { /* all CPUs' non-idle time, from /proc/stat */
    unsigned long long t[8] = {0};
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return 0.0;
    if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &t[0], &t[1], &t[2], &t[3],
               &t[4], &t[5], &t[6], &t[7]) != 8) t[0] = 0;
    fclose(f);
    unsigned long long sum = 0;
    for (int i = 0; i < 8; i++) sum += t[i];
    return (sum - t[3] - t[4]) / (double)sysconf(_SC_CLK_TCK);
}

static void append(char **buf, size_t *len, size_t *cap, const char *bytes, size_t n) {
    if (*len + n > *cap) {
        while (*len + n > *cap) *cap = *cap ? *cap * 2 : 4096;
        *buf = realloc(*buf, *cap);
        if (!*buf) { perror("realloc"); exit(1); }
    }
    memcpy(*buf + *len, bytes, n);
    *len += n;
}

static void queue_requests(Conn *c, int count, uint64_t now) {
    char line[8192];
    for (int i = 0; i < count; i++) {
        uint64_t id = ++c->next_id;
        int n = snprintf(line, sizeof line,
                         "{\"event\":\"%s\",\"data\":%s,\"correlation_id\":\"%d-%llu\"}\n",
                         event, c->data, c->index, (unsigned long long)id);
        append(&c->out, &c->out_len, &c->out_cap, line, (size_t)n);
        c->sent_at[id % SENT_SLOTS] = now;
    }
    c->in_flight += count;
}

static int flush(Conn *c, int epfd) { /* -1 when the server closed the connection */
    size_t done = 0;
    while (done < c->out_len) {
        ssize_t n = write(c->fd, c->out + done, c->out_len - done);
        if (n > 0) { done += (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        return -1;
    }
    memmove(c->out, c->out + done, c->out_len - done);
    c->out_len -= done;
    int want = c->out_len > 0;
    if (want != c->want_write) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_write = want;
    }
    return 0;
}

/* The id of a reply's correlation_id "<conn>-<id>", or 0 if the line carries none of ours. */
static uint64_t reply_id(const char *line, size_t len, int *is_reply, int *is_error) {
    *is_reply = memmem(line, len, "\"type\":\"reply\"", 14) != NULL;
    *is_error = *is_reply && memmem(line, len, "\"error\":", 8) != NULL;
    const char *key = memmem(line, len, "\"correlation_id\":\"", 18);
    if (!key) return 0;
    const char *p = key + 18, *end = line + len;
    while (p < end && *p != '-' && *p != '"') p++;
    if (p >= end || *p != '-') return 0;
    uint64_t id = 0;
    for (p++; p < end && *p >= '0' && *p <= '9'; p++) id = id * 10 + (uint64_t)(*p - '0');
    return id;
}

static int on_readable(Conn *c, int epfd) {
    char chunk[READ_CHUNK];
    int answered = 0;
    for (;;) {
        ssize_t n = read(c->fd, chunk, sizeof chunk);
        if (n == 0) return -1;
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            return -1;
        }
        uint64_t now = now_ns();
        append(&c->in, &c->in_len, &c->in_cap, chunk, (size_t)n);
        size_t start = 0;
        for (;;) {
            char *nl = memchr(c->in + start, '\n', c->in_len - start);
            if (!nl) break;
            size_t len = (size_t)(nl - (c->in + start));
            int is_reply, is_error;
            uint64_t id = reply_id(c->in + start, len, &is_reply, &is_error);
            start += len + 1;
            if (!is_reply || id == 0 || id > c->next_id) { unmatched++; continue; }
            answered++;
            c->in_flight--;
            if (measuring) {
                if (latencies_len == latencies_cap) {
                    latencies_cap = latencies_cap ? latencies_cap * 2 : 1 << 20;
                    latencies = realloc(latencies, latencies_cap * sizeof *latencies);
                    if (!latencies) { perror("realloc"); exit(1); }
                }
                latencies[latencies_len++] = now - c->sent_at[id % SENT_SLOTS];
                if (is_error) errors++;
            }
        }
        memmove(c->in, c->in + start, c->in_len - start);
        c->in_len -= start;
    }
    if (burst ? c->in_flight == 0 : answered > 0) {
        queue_requests(c, burst ? burst_size : answered, now_ns());
        return flush(c, epfd);
    }
    return 0;
}

static int compare(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(double q) { /* the same index rule as loadgen.py's percentile() */
    size_t i = (size_t)(q / 100 * latencies_len);
    if (i >= latencies_len) i = latencies_len - 1;
    return latencies[i] / 1000.0;
}

/* Serve every connection until `until` (monotonic ns). */
static void run_until(int epfd, uint64_t until, int *alive) {
    struct epoll_event events[256];
    for (;;) {
        uint64_t now = now_ns();
        if (now >= until || *alive == 0) return;
        int timeout_ms = (int)((until - now) / 1000000u) + 1;
        int n = epoll_wait(epfd, events, 256, timeout_ms);
        for (int i = 0; i < n; i++) {
            Conn *c = events[i].data.ptr;
            if (c->fd < 0) continue;
            int failed = 0;
            if (events[i].events & EPOLLOUT) failed = flush(c, epfd) < 0;
            if (!failed && (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                failed = on_readable(c, epfd) < 0;
            if (failed) {
                epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = -1;
                (*alive)--;
            }
        }
    }
}

int main(int argc, char **argv) {
    const char *socket_path = NULL;
    int connections = 1, depth = 1, cpu = -1;
    double warmup = 1.0, duration = 5.0;
    long server_pid = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *flag = argv[i], *value = argv[i + 1];
        if (!strcmp(flag, "--socket")) socket_path = value;
        else if (!strcmp(flag, "--event")) event = value;
        else if (!strcmp(flag, "--data")) data = value;
        else if (!strcmp(flag, "--connections")) connections = atoi(value);
        else if (!strcmp(flag, "--depth")) depth = atoi(value);
        else if (!strcmp(flag, "--warmup")) warmup = atof(value);
        else if (!strcmp(flag, "--duration")) duration = atof(value);
        else if (!strcmp(flag, "--cpu")) cpu = atoi(value);
        else if (!strcmp(flag, "--server-pid")) server_pid = atol(value);
        else if (!strcmp(flag, "--burst")) burst = atoi(value);
        else if (!strcmp(flag, "--key-per-connection")) key_per_connection = atoi(value);
        else { fprintf(stderr, "unknown flag %s\n", flag); return 2; }
    }
    if (!socket_path || connections < 1 || depth < 1 || depth >= SENT_SLOTS) {
        fprintf(stderr, "usage: %s --socket PATH [--event E] [--data JSON] [--connections N] "
                        "[--depth N] [--burst 0|1] [--warmup S] [--duration S] [--cpu N] "
                        "[--server-pid PID] [--key-per-connection 0|1]\n",
                argv[0]);
        return 2;
    }
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        sched_setaffinity(0, sizeof set, &set);
    }
    burst_size = depth;
    int epfd = epoll_create1(0);
    Conn *conns = calloc((size_t)connections, sizeof *conns);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, socket_path, sizeof addr.sun_path - 1);
    for (int i = 0; i < connections; i++) {
        Conn *c = &conns[i];
        c->index = i;
        c->data = (char *)data;
        if (key_per_connection) { /* {"key":"c<i>", then the rest of the object */
            const char *rest = strchr(data, '{');
            if (!rest) { fprintf(stderr, "--key-per-connection needs --data to be an object\n"); return 2; }
            rest++;
            while (*rest == ' ') rest++;
            size_t size = strlen(rest) + 32;
            c->data = malloc(size);
            snprintf(c->data, size, "{\"key\":\"c%d\"%s%s", i, *rest == '}' ? "" : ",", rest);
        }
        c->sent_at = calloc(SENT_SLOTS, sizeof *c->sent_at);
        c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
            perror("connect");
            return 1;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
        queue_requests(c, depth, now_ns());
        if (flush(c, epfd) < 0) { fprintf(stderr, "connection %d refused\n", i); return 1; }
    }
    int alive = connections;
    run_until(epfd, now_ns() + (uint64_t)(warmup * 1e9), &alive);

    Usage server = server_pid ? usage_of(server_pid) : (Usage){0.0, 0};
    double client_cpu = process_cpu_s(), busy = machine_busy_s();
    measuring = 1;
    uint64_t started = now_ns();
    run_until(epfd, started + (uint64_t)(duration * 1e9), &alive);
    measuring = 0;
    double elapsed = (now_ns() - started) / 1e9;
    client_cpu = process_cpu_s() - client_cpu;
    busy = machine_busy_s() - busy;
    Usage server_end = server_pid ? usage_of(server_pid) : server;
    double server_cpu = server_end.cpu_s - server.cpu_s;
    unsigned long server_faults = server_end.minor_faults - server.minor_faults;
    double others = busy - client_cpu - server_cpu;
    for (int i = 0; i < connections; i++)
        if (conns[i].fd >= 0) close(conns[i].fd);

    if (latencies_len == 0) {
        printf("{\"requests\":0,\"rps\":0.0,\"errors\":%ld,\"unmatched\":%ld}\n", errors,
               unmatched);
        return 0;
    }
    qsort(latencies, latencies_len, sizeof *latencies, compare);
    printf("{\"requests\":%zu,\"seconds\":%.3f,\"rps\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,"
           "\"max_us\":%.1f,\"errors\":%ld,\"unmatched\":%ld,\"client_cpu_pct\":%.1f,"
           "\"others_cpu_pct\":%.1f,",
           latencies_len, elapsed, latencies_len / elapsed, pct(50), pct(99),
           latencies[latencies_len - 1] / 1000.0, errors, unmatched,
           100 * client_cpu / elapsed, others > 0 ? 100 * others / elapsed : 0.0);
    if (server_pid)
        printf("\"server_cpu_pct\":%.1f,\"server_cpu_us_per_request\":%.2f,"
               "\"server_faults_per_request\":%.3f}\n",
               100 * server_cpu / elapsed, server_cpu * 1e6 / latencies_len,
               server_faults / (double)latencies_len);
    else
        printf("\"server_cpu_pct\":null,\"server_cpu_us_per_request\":null,"
               "\"server_faults_per_request\":null}\n");
    return 0;
}
