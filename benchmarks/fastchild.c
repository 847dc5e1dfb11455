/* A minimal `codex proto` stand-in for benchmarks: the fastest child the proxy can have, so
 * what the benchmark measures beyond it is the proxy's own cost. Same envelope as codex 0.36:
 * session_configured first, then per submission task_started, N deltas, agent_message,
 * token_count, task_complete; stays alive until SIGTERM (default action) or stdin EOF.
 * N comes from FASTCHILD_DELTAS (default 10); FASTCHILD_HANG=1 stops after the deltas. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char line[1 << 20];

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        puts("codex-cli 0.36.0");
        return 0;
    }
    const char *env = getenv("FASTCHILD_DELTAS");
    long deltas = env ? atol(env) : 10;
    int hang = getenv("FASTCHILD_HANG") != NULL; /* stream forever-open: no task_complete */
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    fputs("{\"id\":\"\",\"msg\":{\"type\":\"session_configured\",\"session_id\":\"bench\","
          "\"model\":\"gpt-5\",\"history_log_id\":0,\"history_entry_count\":0}}\n", stdout);
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        char id[128] = "1";
        char *p = strstr(line, "\"id\":\"");
        if (p) {
            p += 6;
            size_t n = strcspn(p, "\"");
            if (n >= sizeof id) n = sizeof id - 1;
            memcpy(id, p, n);
            id[n] = 0;
        }
        printf("{\"id\":\"%s\",\"msg\":{\"type\":\"task_started\",\"model_context_window\":272000}}\n", id);
        for (long i = 0; i < deltas; i++)
            printf("{\"id\":\"%s\",\"msg\":{\"type\":\"agent_message_delta\",\"delta\":\"word%ld \"}}\n", id, i % 10);
        if (hang) {
            fflush(stdout);
            continue;
        }
        printf("{\"id\":\"%s\",\"msg\":{\"type\":\"agent_message\",\"message\":\"", id);
        for (long i = 0; i < deltas; i++) printf("word%ld ", i % 10);
        fputs("\"}}\n", stdout);
        printf("{\"id\":\"%s\",\"msg\":{\"type\":\"token_count\",\"info\":{\"total_token_usage\":"
               "{\"input_tokens\":12,\"cached_input_tokens\":0,\"output_tokens\":%ld,"
               "\"reasoning_output_tokens\":0,\"total_tokens\":%ld}}}}\n", id, deltas, deltas + 12);
        printf("{\"id\":\"%s\",\"msg\":{\"type\":\"task_complete\",\"last_agent_message\":null}}\n", id);
        fflush(stdout);
    }
    return 0;
}
