// c-ares (Debian libc-ares-dev) for MX, A and AAAA look-ups.
#include <ares.h>
#include <arpa/nameser.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
