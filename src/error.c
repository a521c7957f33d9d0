/* error.c: text and names for error codes. */
#define _GNU_SOURCE
#include <mproc/common.h>

#include <string.h>

struct library_error {
    int code;
    const char *name;
    const char *text;
};

static const struct library_error library_errors[] = {
    {MPROC_EWORKERDIED, "MPROC_EWORKERDIED", "worker process died while running the task"},
    {MPROC_EBROKEN, "MPROC_EBROKEN", "object is broken"},
    {MPROC_ETASKFAILED, "MPROC_ETASKFAILED", "task reported an error"},
    {MPROC_ECLOSED, "MPROC_ECLOSED", "object is closed"},
    {MPROC_ECANCELLED, "MPROC_ECANCELLED", "task was cancelled"},
};

static const struct library_error *find_library_error(int code)
{
    for (size_t i = 0; i < sizeof(library_errors) / sizeof(library_errors[0]); i++) {
        if (library_errors[i].code == code)
            return &library_errors[i];
    }
    return NULL;
}

const char *mproc_strerror(int code)
{
    if (code == 0)
        return "success";
    const struct library_error *lib = find_library_error(code);
    if (lib)
        return lib->text;
    /* strerrordesc_np returns static text, unlike strerror, so it is thread-safe. */
    const char *text = code < 0 ? strerrordesc_np(-code) : NULL;
    return text ? text : "unknown error";
}

const char *mproc_errname(int code)
{
    if (code == 0)
        return "OK";
    const struct library_error *lib = find_library_error(code);
    if (lib)
        return lib->name;
    const char *name = code < 0 ? strerrorname_np(-code) : NULL;
    return name ? name : "UNKNOWN";
}
