/* bench.h: timing, medians and the JSON line every benchmark prints. */
#ifndef MPROC_BENCH_H
#define MPROC_BENCH_H

#define BENCH_MAX_ROUNDS 64

/* Monotonic seconds. */
double bench_now_s(void);

/* Median of n values (n >= 1); reorders values. */
double bench_median(double *values, int n);

/* Value of "--name N" on the command line, or fallback. */
int bench_arg_int(int argc, char **argv, const char *name, int fallback);

/* Prints a message on stderr and exits with status 1. */
_Noreturn void bench_die(const char *message);

/*
 * Prints one figure as a JSON line on stdout:
 * {"bench":..,"case":..,"value":..,"unit":..,"reference":..,"reference_value":..}
 * reference may be NULL when the figure has none.
 */
void bench_report(const char *bench, const char *name, double value, const char *unit,
                  const char *reference, double reference_value);

#endif
