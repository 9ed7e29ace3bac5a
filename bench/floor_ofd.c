/* The C floor for an uncontended file lock: F_OFD_SETLK write lock, then
 * F_OFD_SETLK unlock, on a descriptor opened once.
 *
 * Usage: floor_ofd LOCKFILE ITERATIONS
 * Prints the mean nanoseconds per lock+unlock pair over ITERATIONS pairs,
 * timed on CLOCK_MONOTONIC after a short warm-up. bench/compare.py compiles
 * this with `cc -O2` at run time and runs it once per round.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WARMUP 1000L

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* Lock then unlock fd once; 0, or the errno of the call that failed. */
static int lock_pair(int fd)
{
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
    if (fcntl(fd, F_OFD_SETLK, &fl) != 0)
        return errno;
    fl.l_type = F_UNLCK;
    if (fcntl(fd, F_OFD_SETLK, &fl) != 0)
        return errno;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s LOCKFILE ITERATIONS\n", argv[0]);
        return 2;
    }
    long iterations = strtol(argv[2], NULL, 10);
    if (iterations <= 0) {
        fprintf(stderr, "ITERATIONS must be a positive number\n");
        return 2;
    }
    int fd = open(argv[1], O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "open %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    int err = 0;
    for (long i = 0; i < WARMUP && !err; i++)
        err = lock_pair(fd);
    double start = now_ns();
    for (long i = 0; i < iterations && !err; i++)
        err = lock_pair(fd);
    double elapsed = now_ns() - start;
    if (err) {
        fprintf(stderr, "fcntl F_OFD_SETLK: %s\n", strerror(err));
        return 1;
    }
    printf("%.3f\n", elapsed / (double)iterations);
    close(fd);
    return 0;
}
