/* commands.h - the docmint subcommands.  Each takes the arguments after
 * its own name (argv[0] is the command name) and returns the exit status. */
#ifndef DM_COMMANDS_H
#define DM_COMMANDS_H

int cmd_ask(int argc, char **argv);
int cmd_forward(int argc, char **argv);
int cmd_analyze_item(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_init(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_bench_dispatch(int argc, char **argv);
int cmd_preprocess(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_worker(int argc, char **argv);
int cmd_worker_key(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_validate(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_store(int argc, char **argv);
int cmd_cache_check(int argc, char **argv);
int cmd_prune(int argc, char **argv);
int cmd_params(int argc, char **argv);
int cmd_plan(int argc, char **argv);
int cmd_compare(int argc, char **argv);

#endif
