/* bench.c: see bench.h. */
#define _GNU_SOURCE
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double bench_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_median(double *values, int n)
{
    qsort(values, (size_t)n, sizeof(values[0]), compare_double);
    return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

int bench_arg_int(int argc, char **argv, const char *name, int fallback)
{
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], name) == 0)
            return atoi(argv[i + 1]);
    }
    return fallback;
}

void bench_die(const char *message)
{
    fprintf(stderr, "bench: %s\n", message);
    exit(1);
}

void bench_report(const char *bench, const char *name, double value, const char *unit,
                  const char *reference, double reference_value)
{
    printf("{\"bench\": \"%s\", \"case\": \"%s\", \"value\": %.6g, \"unit\": \"%s\"", bench, name,
           value, unit);
    if (reference)
        printf(", \"reference\": \"%s\", \"reference_value\": %.6g", reference, reference_value);
    printf("}\n");
    fflush(stdout);
}
