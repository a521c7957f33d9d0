/*
 * mproc.h: the whole public API of libmproc, Python's multiprocessing for C.
 * Include this, or only the parts you use from <mproc/...>.
 */
#ifndef MPROC_H
#define MPROC_H

#include <mproc/common.h>
#include <mproc/pipe.h>
#include <mproc/pool.h>
#include <mproc/process.h>
#include <mproc/queue.h>
#include <mproc/shm.h>
#include <mproc/sync.h>

#endif /* MPROC_H */
