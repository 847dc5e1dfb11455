/* A minimal `codex app-server` stand-in for benchmarks: the fastest worker the proxy can have,
 * so what a benchmark measures beyond it is the proxy's own cost.
 *
 * One JSON-RPC object per line on stdin/stdout, as codex 0.169.0 speaks it (no "jsonrpc"
 * member). It answers initialize, thread/start, turn/start, thread/delete, thread/archive and
 * thread/loaded/list; other requests get codex's error (-32600), notifications are ignored.
 * A turn/start is answered, then streamed at once in one write: turn/started, N
 * item/agentMessage/delta, item/completed (the whole agentMessage), thread/tokenUsage/updated,
 * turn/completed; every notification carries its threadId and turnId.
 *
 * Environment:
 *   FAST_DELTAS=N   deltas per turn (default 10); the deltas are "word0 " .. "word9 " cycled
 *   FAST_HANG=1     stop after the deltas: the turn stays open until thread/delete
 *   FAST_STAMP=1    the first delta's text is "@<CLOCK_MONOTONIC ns> " taken just before the
 *                   write, so a client on this machine can tell how long the proxy held it
 * `fastappserver --version` prints "codex-cli 0.169.0". Exits on stdin EOF or SIGTERM. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static char line[1 << 20];

/* Copies the string value of "key":"..." into out (no unescaping: ids are plain). */
static int str_field(const char *src, const char *key, char *out, size_t cap) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":\"", key);
    const char *p = strstr(src, pat);
    if (!p) return 0;
    p += strlen(pat);
    size_t n = strcspn(p, "\"");
    if (n >= cap) n = cap - 1;
    memcpy(out, p, n);
    out[n] = 0;
    return 1;
}

/* The raw JSON of "id": (an integer or a string, copied verbatim). */
static int id_field(const char *src, char *out, size_t cap) {
    const char *p = strstr(src, "\"id\":");
    if (!p) return 0;
    p += 5;
    size_t n = (*p == '"') ? strcspn(p + 1, "\"") + 2 : strcspn(p, ",}");
    if (n >= cap) n = cap - 1;
    memcpy(out, p, n);
    out[n] = 0;
    return 1;
}

static long long mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        puts("codex-cli 0.169.0");
        return 0;
    }
    const char *env = getenv("FAST_DELTAS");
    long deltas = env ? atol(env) : 10;
    int hang = getenv("FAST_HANG") != NULL;
    int stamp = getenv("FAST_STAMP") != NULL;
    long threads = 0, turns = 0;
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    while (fgets(line, sizeof line, stdin)) {
        char method[64], id[64], thread[64];
        if (!str_field(line, "method", method, sizeof method)) continue; /* a response: ignore */
        if (!id_field(line, id, sizeof id)) continue;                   /* a notification */
        if (strcmp(method, "initialize") == 0) {
            printf("{\"id\":%s,\"result\":{\"userAgent\":\"fastappserver/0.169.0\","
                   "\"codexHome\":\"/nonexistent\",\"platformFamily\":\"unix\","
                   "\"platformOs\":\"linux\"}}\n", id);
        } else if (strcmp(method, "thread/start") == 0) {
            printf("{\"id\":%s,\"result\":{\"thread\":{\"id\":\"thr-%ld\",\"status\":{\"type\":"
                   "\"idle\"},\"turns\":[]},\"model\":\"gpt-5\",\"modelProvider\":\"fake\"}}\n",
                   id, ++threads);
        } else if (strcmp(method, "turn/start") == 0) {
            if (!str_field(line, "threadId", thread, sizeof thread)) strcpy(thread, "none");
            long turn = ++turns;
            printf("{\"id\":%s,\"result\":{\"turn\":{\"id\":\"turn-%ld\",\"items\":[],"
                   "\"status\":\"inProgress\",\"error\":null}}}\n", id, turn);
            printf("{\"method\":\"turn/started\",\"params\":{\"threadId\":\"%s\",\"turn\":{\"id\":"
                   "\"turn-%ld\",\"items\":[],\"status\":\"inProgress\",\"error\":null}}}\n",
                   thread, turn);
            char first[32] = "word0 ";
            for (long i = 0; i < deltas; i++) {
                if (i == 0 && stamp) {
                    snprintf(first, sizeof first, "@%lld ", mono_ns());
                    printf("{\"method\":\"item/agentMessage/delta\",\"params\":{\"threadId\":"
                           "\"%s\",\"turnId\":\"turn-%ld\",\"itemId\":\"msg-%ld\",\"delta\":"
                           "\"%s\"}}\n", thread, turn, turn, first);
                }
                else
                    printf("{\"method\":\"item/agentMessage/delta\",\"params\":{\"threadId\":"
                           "\"%s\",\"turnId\":\"turn-%ld\",\"itemId\":\"msg-%ld\",\"delta\":"
                           "\"word%ld \"}}\n", thread, turn, turn, i % 10);
                if (i == 0 && stamp) fflush(stdout);
            }
            if (!hang) {
                printf("{\"method\":\"item/completed\",\"params\":{\"threadId\":\"%s\",\"turnId\":"
                       "\"turn-%ld\",\"item\":{\"type\":\"agentMessage\",\"id\":\"msg-%ld\","
                       "\"text\":\"", thread, turn, turn);
                if (deltas > 0) fputs(first, stdout);
                for (long i = 1; i < deltas; i++) printf("word%ld ", i % 10);
                fputs("\"}}}\n", stdout);
                printf("{\"method\":\"thread/tokenUsage/updated\",\"params\":{\"threadId\":\"%s\","
                       "\"turnId\":\"turn-%ld\",\"tokenUsage\":{\"total\":{\"totalTokens\":%ld,"
                       "\"inputTokens\":12,\"cachedInputTokens\":0,\"outputTokens\":%ld,"
                       "\"reasoningOutputTokens\":0},\"last\":{\"totalTokens\":%ld,"
                       "\"inputTokens\":12,\"cachedInputTokens\":0,\"outputTokens\":%ld,"
                       "\"reasoningOutputTokens\":0}}}}\n",
                       thread, turn, deltas + 12, deltas, deltas + 12, deltas);
                printf("{\"method\":\"turn/completed\",\"params\":{\"threadId\":\"%s\",\"turn\":{"
                       "\"id\":\"turn-%ld\",\"items\":[],\"status\":\"completed\",\"error\":null}}}\n",
                       thread, turn);
            }
        } else if (strcmp(method, "thread/delete") == 0 || strcmp(method, "thread/archive") == 0) {
            printf("{\"id\":%s,\"result\":{}}\n", id);
        } else if (strcmp(method, "thread/loaded/list") == 0) {
            printf("{\"id\":%s,\"result\":{\"data\":[],\"nextCursor\":null}}\n", id);
        } else {
            printf("{\"id\":%s,\"error\":{\"code\":-32600,\"message\":\"unknown method `%s`\"}}\n",
                   id, method);
        }
        /* Answer what has been read before waiting for more input: one write per burst. */
#ifdef __GLIBC__
        if (stdin->_IO_read_ptr >= stdin->_IO_read_end)
#endif
            fflush(stdout);
    }
    fflush(stdout);
    return 0;
}
