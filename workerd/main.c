/*
 * main.c - entry point of workerd: dispatches `workerd <command> [options]` to the
 * command table below. Every command lives in its own cmd_*.c file.
 */
#include <stdio.h>
#include <string.h>

#include "workerd/commands.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
    int hidden; /* internal: not listed by --help */
} workerd_command;

static const workerd_command commands[] = {
    {"run", workerd_cmd_run, "the daemon: claim queued jobs, separate them, write their stems"},
    {"inspect", workerd_cmd_inspect, "queues, workers and running jobs in Redis"},
    {"purge", workerd_cmd_purge, "cancel queued jobs and/or empty the dead-letter stream"},
    {"separate", workerd_cmd_separate, "separate audio files into stems, offline"},
    {"device-worker", workerd_cmd_device_worker, "(internal) serve batches for the pool", 1},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: workerd <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (!commands[i].hidden)
            fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nRun `workerd <command> --help` for the options of a command.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "workerd: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
