/*
 * A stand-in for <criterion/criterion.h>, for the ThreadSanitizer build only
 * (scripts/test --tsan). Criterion itself cannot start under TSan: BoxFort
 * maps its shared arena at random fixed addresses that TSan reserves for its
 * shadow memory ("Could not initialize inheritable arena", Criterion issue
 * #274). This header gives the suites the part of Criterion's API they use
 * (Test() with .timeout, cr_assert*, cr_log_info) and tsan_runner.c runs each
 * test in its own forked process with its timeout, as Criterion does.
 */
#ifndef MPROC_TSAN_CRITERION_H
#define MPROC_TSAN_CRITERION_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

struct tsan_test {
    const char *suite;
    const char *name;
    void (*fn)(void);
    int timeout; /* seconds, 0: the runner's default */
    struct tsan_test *next;
};

void tsan_register(struct tsan_test *test);
__attribute__((noreturn, format(printf, 4, 5))) void
tsan_fail(const char *file, int line, const char *expr, const char *format, ...);
__attribute__((format(printf, 1, 2))) void tsan_log(const char *format, ...);

#define Test(S, N, ...)                                                                            \
    static void tsan_fn_##S##_##N(void);                                                           \
    __attribute__((constructor)) static void tsan_reg_##S##_##N(void)                              \
    {                                                                                              \
        static struct tsan_test test = {                                                           \
            .suite = #S, .name = #N, .fn = tsan_fn_##S##_##N, __VA_ARGS__};                        \
        tsan_register(&test);                                                                      \
    }                                                                                              \
    static void tsan_fn_##S##_##N(void)

/* " " __VA_ARGS__: an optional message, a string literal and its arguments. */
#define cr_assert(cond, ...)                                                                       \
    do {                                                                                           \
        if (!(cond))                                                                               \
            tsan_fail(__FILE__, __LINE__, #cond, " " __VA_ARGS__);                                 \
    } while (0)
#define cr_assert_not(cond, ...)    cr_assert(!(cond), __VA_ARGS__)
#define cr_assert_eq(a, b, ...)     cr_assert((a) == (b), __VA_ARGS__)
#define cr_assert_neq(a, b, ...)    cr_assert((a) != (b), __VA_ARGS__)
#define cr_assert_lt(a, b, ...)     cr_assert((a) < (b), __VA_ARGS__)
#define cr_assert_leq(a, b, ...)    cr_assert((a) <= (b), __VA_ARGS__)
#define cr_assert_gt(a, b, ...)     cr_assert((a) > (b), __VA_ARGS__)
#define cr_assert_geq(a, b, ...)    cr_assert((a) >= (b), __VA_ARGS__)
#define cr_assert_null(p, ...)      cr_assert((p) == NULL, __VA_ARGS__)
#define cr_assert_not_null(p, ...)  cr_assert((p) != NULL, __VA_ARGS__)
#define cr_assert_str_eq(a, b, ...) cr_assert(strcmp((a), (b)) == 0, __VA_ARGS__)
/* Criterion's cr_expect_* go on after a failure; here they stop the test, as cr_assert_*. */
#define cr_expect(cond, ...)     cr_assert(cond, __VA_ARGS__)
#define cr_expect_eq(a, b, ...)  cr_assert_eq(a, b, __VA_ARGS__)
#define cr_expect_neq(a, b, ...) cr_assert_neq(a, b, __VA_ARGS__)
#define cr_expect_lt(a, b, ...)  cr_assert_lt(a, b, __VA_ARGS__)
#define cr_expect_gt(a, b, ...)  cr_assert_gt(a, b, __VA_ARGS__)
#define cr_assert_fail(...)      tsan_fail(__FILE__, __LINE__, "failed", " " __VA_ARGS__)
#define cr_log_info(...)         tsan_log(__VA_ARGS__)

#endif
