/* version.c: the runtime twins of the version macros in mproc/common.h. */
#include <mproc/common.h>

unsigned mproc_version(void)
{
    return MPROC_VERSION_HEX;
}

const char *mproc_version_string(void)
{
    return MPROC_VERSION_STRING;
}
