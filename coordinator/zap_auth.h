/* zap_auth.h - the coordinator's ZAP handler (ZeroMQ RFC 27): a thread with
 * a REP socket on inproc://zeromq.zap.01 in the coordinator's context that
 * accepts a CURVE handshake only when the client's long-term public key is
 * the job's client key; the connection's user id (the "User-Id" property of
 * its messages) is that key in Z85.  Everything else (another key, another mechanism)
 * gets "400" and a line on stderr (at most one line per few seconds, with
 * a count, so a client retrying in a loop cannot flood the log).
 *
 * libzmq consults the handler only when one is bound when the handshake
 * runs, so zap_start returns after the bind: start it before the ROUTER
 * binds. */
#ifndef DM_ZAP_AUTH_H
#define DM_ZAP_AUTH_H

#include <stdint.h>

#include "common/dm_error.h"

typedef struct ZapAuth ZapAuth;

/* client_public: Z85 text of the one key to accept.  log_prefix starts each
 * log line (e.g. "docmint run"). */
int zap_start(void *zctx, const char *client_public, const char *log_prefix, ZapAuth **out,
              DmErr *err);

/* Accept the keys of an allow-list file as well: one line "NAME Z85" per
 * worker, lines starting with '#' and blank lines ignored (the lines `docmint
 * worker-key` prints).  A connection with a listed key gets NAME as its user
 * id.  Errors name the file and line.  Call before the ROUTER binds. */
int zap_allow_file(ZapAuth *z, const char *path, DmErr *err);

/* Refuse the listed key with user id `user` from now on (a worker that was
 * dropped).  Returns 0, or -1 when user is not a listed name (the job's
 * shared key cannot be refused: the job's own ranks use it). */
int zap_ban(ZapAuth *z, const char *user);

/* Connections refused and accepted so far. */
uint64_t zap_refused(const ZapAuth *z);
uint64_t zap_accepted(const ZapAuth *z);

/* Stop the thread and close its sockets (before zmq_ctx_term). */
void zap_stop(ZapAuth **z);

#endif
