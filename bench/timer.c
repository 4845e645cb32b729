/* Timer for bench/run.sh: runs commands and measures each one's wall time (CLOCK_MONOTONIC)
 * and peak RSS (wait4's ru_maxrss: the child and the descendants it waited for), without
 * a shell or GNU time in between, so that the numbers are the commands' own.
 *
 *   timer run PLAN            PLAN: one command per line, "LABEL<TAB>ARG0<TAB>ARG1...";
 *                             runs them in order, prints "LABEL WALL_US MAXRSS_KB RC" each.
 *                             stdin and stdout are /dev/null; stderr goes to $TIMER_LOG
 *                             (appended) or /dev/null.
 *   timer wrap OUT LABEL CMD...
 *                             as an OCI hook: runs CMD with this stdin (the state JSON),
 *                             appends "LABEL WALL_US MAXRSS_KB RC" to OUT, exits as CMD did.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long long)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

/* Runs argv; returns the exit code (128+signal when killed). */
static int measure(char **argv, int quiet, long long *wall_us, long *maxrss_kb) {
  const char *log = getenv("TIMER_LOG");
  long long t0 = now_us();
  pid_t pid = fork();
  if (pid < 0) {
    perror("fork");
    exit(2);
  }
  if (pid == 0) {
    if (quiet) {
      int in = open("/dev/null", O_RDWR);
      int err = log ? open(log, O_WRONLY | O_APPEND | O_CREAT, 0644) : in;
      if (in < 0 || err < 0) _exit(126);
      dup2(in, 0);
      dup2(in, 1);
      dup2(err, 2);
    }
    execvp(argv[0], argv);
    fprintf(stderr, "timer: %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  int status;
  struct rusage ru;
  while (wait4(pid, &status, 0, &ru) < 0) {
    if (errno != EINTR) {
      perror("wait4");
      exit(2);
    }
  }
  *wall_us = now_us() - t0;
  *maxrss_kb = ru.ru_maxrss;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int run_plan(const char *plan) {
  FILE *f = fopen(plan, "r");
  if (!f) {
    perror(plan);
    return 2;
  }
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  while ((n = getline(&line, &cap, f)) > 0) {
    if (line[n - 1] == '\n') line[--n] = 0;
    if (n == 0) continue;
    char *args[256];
    int argc = 0;
    for (char *tok = strtok(line, "\t"); tok && argc < 255; tok = strtok(NULL, "\t")) args[argc++] = tok;
    args[argc] = NULL;
    if (argc < 2) continue;
    long long wall;
    long rss;
    int rc = measure(args + 1, 1, &wall, &rss);
    printf("%s %lld %ld %d\n", args[0], wall, rss, rc);
    fflush(stdout);
  }
  free(line);
  fclose(f);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 3 && strcmp(argv[1], "run") == 0) return run_plan(argv[2]);
  if (argc >= 5 && strcmp(argv[1], "wrap") == 0) {
    long long wall;
    long rss;
    int rc = measure(argv + 4, 0, &wall, &rss);
    FILE *out = fopen(argv[2], "a");
    if (out) {
      fprintf(out, "%s %lld %ld %d\n", argv[3], wall, rss, rc);
      fclose(out);
    }
    return rc;
  }
  fprintf(stderr, "usage: timer run PLAN | timer wrap OUT LABEL CMD...\n");
  return 2;
}
