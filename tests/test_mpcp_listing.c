/*
 * The folder listings that workers make for the planner (the walk shared
 * out): a request lists its folder and, breadth first, folders below it
 * within a budget; wide folders and failures come back for the planner to
 * read; the stats are the kernel's; a cut or corrupt result is refused.
 */
#include "mpcp_tree.h"

/* The listing code and its byte format, compiled in, with the root as a plain folder. */
#include "../tools/mpcp/listing.c"
#include "../tools/mpcp/task.c"

volatile sig_atomic_t mpcp_interrupted;
static int root_fd = -1;
static char work[256];

int mpcp_exec_open_src(uint32_t id, const char *path, bool follow, int *fd)
{
    (void)follow;
    if (id != 7)
        return -ENOENT;
    *fd = openat(root_fd, *path ? path : ".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    return *fd < 0 ? -errno : 0;
}

static void setup(void)
{
    root_fd = make_work_dir(work, sizeof work, "listing");
}

static void teardown(void)
{
    close(root_fd);
    remove_tree_at(AT_FDCWD, work);
}

static void list(const char *path, unsigned flags, struct mpcp_buf *out)
{
    struct mpcp_buf req = {0};
    cr_assert_eq(mpcp_list_request(&req, 7, path, flags), 0);
    cr_assert(mpcp_list_is_request(req.data, req.len));
    cr_assert_eq(mpcp_list_run(req.data, req.len, out), 0);
    mpcp_buf_free(&req);
}

/* Decodes every section; returns how many, and checks each entry against fstatat. */
static uint32_t check_sections(const struct mpcp_buf *out, int top, struct mpcp_list_info *first)
{
    uint32_t sections;
    size_t pos;
    cr_assert_eq(mpcp_list_decode_result(out->data, out->len, &sections, &pos), 0);
    for (uint32_t k = 0; k < sections; k++) {
        struct mpcp_list_info info;
        cr_assert_eq(mpcp_list_decode_section(out->data, out->len, &pos, &info), 0);
        if (k == 0 && first)
            *first = info;
        int dir = openat(top, *info.rel ? info.rel : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert_geq(dir, 0, "section %s", info.rel);
        struct stat dst;
        cr_assert_eq(fstat(dir, &dst), 0);
        cr_assert(info.status != 0 || info.dir_ino == dst.st_ino);
        size_t at = info.entries;
        for (uint32_t i = 0; i < info.count; i++) {
            struct mpcp_listed e;
            cr_assert_eq(mpcp_list_decode_entry(out->data, info.end, &at, &e), 0);
            struct stat st;
            cr_assert_eq(fstatat(dir, e.name, &st, AT_SYMLINK_NOFOLLOW), 0, "%s", e.name);
            cr_assert_eq(e.err, 0);
            cr_assert_eq(e.st.st_ino, st.st_ino);
            cr_assert_eq(e.st.st_mode, st.st_mode);
            cr_assert_eq(e.st.st_size, st.st_size);
            cr_assert_eq(e.st.st_nlink, st.st_nlink);
            cr_assert_eq(e.st.st_mtim.tv_nsec, st.st_mtim.tv_nsec);
        }
        cr_assert_eq(at, info.end, "section %s has bytes after its entries", info.rel);
        close(dir);
    }
    cr_assert_eq(pos, out->len);
    return sections;
}

Test(mpcp_listing, lists_the_folder_then_those_below, .init = setup, .fini = teardown,
     .timeout = 30)
{
    int s = sub_dir(root_fd, "s", 0755);
    put_file(s, "top", "data", 0600);
    must(symlinkat("nowhere", s, "dangling"), "symlink", "dangling");
    for (int d = 0; d < 3; d++) {
        char name[16];
        snprintf(name, sizeof name, "d%d", d);
        int sub = sub_dir(s, name, 0755);
        put_file(sub, "f", "x", 0644);
        close(sub_dir(sub, "deeper", 0700));
        close(sub);
    }
    set_mtime(s, "top", 1500000000, 123456789);
    struct mpcp_buf out = {0};
    list("s", 0, &out);
    struct mpcp_list_info first;
    /* s, d0..d2, and the three "deeper": all within the budget. */
    cr_assert_eq(check_sections(&out, s, &first), 7);
    cr_assert_str_eq(first.rel, "");
    cr_assert_eq(first.status, 0);
    cr_assert_eq(first.count, 5);
    mpcp_buf_free(&out);
    close(s);
}

Test(mpcp_listing, budget_bounds_a_request, .init = setup, .fini = teardown, .timeout = 30)
{
    int s = sub_dir(root_fd, "s", 0755);
    for (int d = 0; d < 200; d++) {
        char name[16];
        snprintf(name, sizeof name, "d%d", d);
        close(sub_dir(s, name, 0755));
    }
    struct mpcp_buf out = {0};
    list("s", 0, &out);
    uint32_t sections = check_sections(&out, s, NULL);
    /* The budget's folders, the requested one first: the planner asks for the rest. */
    cr_assert_eq(sections, BUDGET_FOLDERS);
    mpcp_buf_free(&out);
    close(s);
}

Test(mpcp_listing, wide_folder_and_missing_folder_go_back_to_the_planner, .init = setup,
     .fini = teardown, .timeout = 60)
{
    int s = sub_dir(root_fd, "wide", 0755);
    for (unsigned i = 0; i <= MPCP_LIST_MAX; i++) {
        char name[16];
        snprintf(name, sizeof name, "f%u", i);
        int fd = openat(s, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        must(fd, "create", name);
        close(fd);
    }
    struct mpcp_buf out = {0};
    list("wide", 0, &out);
    struct mpcp_list_info first;
    cr_assert_eq(check_sections(&out, s, &first), 1);
    cr_assert_eq(first.status, MPCP_LIST_WIDE);
    cr_assert_eq(first.count, 0);
    close(s);

    list("missing/folder", 0, &out);
    uint32_t sections;
    size_t pos;
    cr_assert_eq(mpcp_list_decode_result(out.data, out.len, &sections, &pos), 0);
    cr_assert_eq(sections, 1);
    cr_assert_eq(mpcp_list_decode_section(out.data, out.len, &pos, &first), 0);
    cr_assert_eq(first.status, -ENOENT);
    cr_assert_eq(first.count, 0);
    mpcp_buf_free(&out);
}

Test(mpcp_listing, cut_or_corrupt_results_are_refused, .init = setup, .fini = teardown,
     .timeout = 30)
{
    int s = sub_dir(root_fd, "s", 0755);
    put_file(s, "a", "1", 0644);
    put_file(s, "b", "22", 0644);
    close(sub_dir(s, "sub", 0755));
    close(s);
    struct mpcp_buf out = {0};
    list("s", 0, &out);
    for (size_t cut = 0; cut < out.len; cut++) {
        uint32_t sections;
        size_t pos;
        if (mpcp_list_decode_result(out.data, cut, &sections, &pos) != 0)
            continue;
        bool bad = false;
        for (uint32_t k = 0; k < sections && !bad; k++) {
            struct mpcp_list_info info;
            bad = mpcp_list_decode_section(out.data, cut, &pos, &info) != 0;
            size_t at = info.entries;
            for (uint32_t i = 0; i < info.count && !bad; i++) {
                struct mpcp_listed e;
                bad = mpcp_list_decode_entry(out.data, info.end, &at, &e) != 0;
            }
        }
        cr_assert(bad, "a result cut at %zu bytes decoded", cut);
    }
    /* A request that is not one is refused too. */
    struct mpcp_buf junk = {0};
    cr_assert_eq(mpcp_list_run((const unsigned char *)"LST2", 4, &junk), -EBADMSG);
    mpcp_buf_free(&junk);
    mpcp_buf_free(&out);
}
