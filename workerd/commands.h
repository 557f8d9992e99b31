/*
 * commands.h - the subcommands of the workerd binary (`workerd <command> ...`).
 *
 * Each command takes argv starting at its own name and returns the process exit
 * status (0 success, 1 failure, 2 usage error).
 */
#ifndef WORKERD_COMMANDS_H
#define WORKERD_COMMANDS_H

/* Offline separation of files into DIR/{model}/{track}/{stem}.wav. */
int workerd_cmd_separate(int argc, char **argv);
/* workerd run: the daemon (cmd_run.c, supervisor.c) */
int workerd_cmd_run(int argc, char **argv);
/* workerd inspect / purge: operators' view of the queue (cmd_inspect.c) */
int workerd_cmd_inspect(int argc, char **argv);
int workerd_cmd_purge(int argc, char **argv);

/* Internal: a device worker process started by the pool (workerd/pool.c). */
int workerd_cmd_device_worker(int argc, char **argv);

#endif
