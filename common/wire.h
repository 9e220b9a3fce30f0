/* wire.h - the link between the coordinator and its workers: Envelope
 * messages (schemas/records.proto) over ZeroMQ, per-job CURVE keys, and
 * the join document that tells a worker where to connect and how to work.
 *
 * Frames: a DEALER worker sends one frame, the packed Envelope; the
 * coordinator's ROUTER sees [routing id][Envelope] and replies the same way.
 *
 * The join document is JSON.  Rank 0 broadcasts it to the MPI ranks and
 * writes it, mode 0600, next to the output store (OUTPUT/worker.keys), where
 * `docmint worker --keys FILE` reads it to join a running job:
 *   {"endpoint": "tcp://host:port", "server_public": Z85, "client_public": Z85,
 *    "client_secret": Z85, "job": "/abs/job.json", "model": "/abs/model",
 *    "model_fingerprint": "hex", "stage": "infer", "max_length": 0,
 *    "pdf_dpi": 200, "threads": 0, "precision": "fp32", "heartbeat_seconds": 1,
 *    "heartbeat_liveness": 5, "credit": 2,
 *    "top_k": 64, "temperatures": [1.0], "first_answer_only": false}
 * The client secret lets any holder join the job: the file is as secret as
 * the data the job reads.  A job with an allow-list of worker keys (job key
 * "worker_keys") writes the file with both client keys "": each outside
 * worker adds its own (wire_key_file_read). */
#ifndef DM_WIRE_H
#define DM_WIRE_H

#include <stddef.h>

#include "common/dm_error.h"
#include "records.pb-c.h"

#define WIRE_KEY_CHARS 40 /* Z85 text of a 32-byte CURVE key */
#define WIRE_MAX_MSG (64 << 20) /* ZMQ_MAXMSGSIZE of both ends */

typedef struct WireJoin {
    char endpoint[512];
    char server_public[WIRE_KEY_CHARS + 1];
    char client_public[WIRE_KEY_CHARS + 1];
    char client_secret[WIRE_KEY_CHARS + 1];
    char job[4096];   /* absolute path of the job file (informational) */
    char model[4096]; /* absolute checkpoint folder */
    char model_fingerprint[17];
    char stage[32];
    int max_length;   /* 0: the model's max_position_embeddings */
    int pdf_dpi;
    int64_t max_page_pixels; /* 0: the default (optional in the JSON) */
    double page_timeout_seconds; /* the worker's watchdog; 0: none (optional in the JSON) */
    int threads;      /* 0: automatic */
    int precision;    /* DmPrecision of the model: 0 fp32, 1 bf16 ("precision":
                       * "fp32" / "bf16"; absent = fp32) */
    double heartbeat_seconds;
    int heartbeat_liveness;
    int credit;
    /* stage cache-logits (optional in the JSON: absent = k 64, T [1], all answers) */
    int top_k;        /* 0: full */
    int n_temps;
    double temps[16];
    int first_answer_only;
    /* stage analyze: its job keys as one JSON object (compact text; "" when
     * the job has none), read by the stage (stage_analyze.h) */
    char analyze[8192];
} WireJoin;

/* Serialise to JSON text (malloc'ed) / parse it back (`what` names the
 * source in messages).  The client keys may both be "" (a job whose outside
 * workers bring their own keys: wire_key_file_read). */
int wire_join_to_json(const WireJoin *j, char **text, DmErr *err);
int wire_join_parse(const char *text, const char *what, WireJoin *j, DmErr *err);

/* Write atomically with mode 0600 (a temporary file renamed over path);
 * read and parse. */
int wire_join_write(const char *path, const WireJoin *j, DmErr *err);
int wire_join_read(const char *path, WireJoin *j, DmErr *err);

/* Fill the three keys with fresh keypairs (zmq_curve_keypair); the server
 * secret goes to server_secret (41 bytes).  Fails when this libzmq lacks
 * CURVE. */
int wire_keys_generate(WireJoin *j, char server_secret[WIRE_KEY_CHARS + 1], DmErr *err);

/* A worker's own CURVE keypair, for a job with an allow-list of keys
 * (job key "worker_keys"): a JSON file {"name": NAME, "public": Z85,
 * "secret": Z85} of mode 0600.  NAME: 1 to 64 of [A-Za-z0-9._-].  _new
 * makes the pair and refuses to overwrite a file; _read checks the pair. */
int wire_key_file_new(const char *path, const char *name, char public_z85[WIRE_KEY_CHARS + 1],
                      DmErr *err);
int wire_key_file_read(const char *path, char name[65], char public_z85[WIRE_KEY_CHARS + 1],
                       char secret_z85[WIRE_KEY_CHARS + 1], DmErr *err);
int wire_key_name_valid(const char *name);

/* Check a Z85 key: 40 characters of the Z85 alphabet that decode. */
int wire_key_valid(const char *z85);

/* Options both ends set: ZMQ_LINGER 0 and ZMQ_MAXMSGSIZE. */
int wire_socket_defaults(void *sock, DmErr *err);

/* Make sock a CURVE client of the job (server key, client keypair). */
int wire_curve_client(void *sock, const WireJoin *j, DmErr *err);

/* Send one Envelope; with routing_id (ROUTER) it goes first.  flags is 0
 * or ZMQ_DONTWAIT.  On failure errno-like zmq_errno() is left for the
 * caller to inspect (EAGAIN, EHOSTUNREACH). */
int wire_send(void *sock, const void *routing_id, size_t idlen, const Docmint__Envelope *env,
              int flags, DmErr *err);

/* Receive one message (non-blocking when flags is ZMQ_DONTWAIT).  With
 * routing_id (ROUTER: a buffer of 256 bytes) the first frame is stored
 * there.  Returns 1 with *env (free with docmint__envelope__free_unpacked),
 * 0 when nothing was waiting (ZMQ_DONTWAIT) or the message was malformed
 * (then err says why and *env is NULL), -1 on a socket error. */
int wire_recv(void *sock, unsigned char *routing_id, size_t *idlen, Docmint__Envelope **env,
              int flags, DmErr *err);

/* Who sent a message to a ROUTER: its routing id, the user id its ZAP
 * handler gave the connection ("" when none), and the body's size. */
typedef struct WirePeer {
    unsigned char id[256];
    size_t idlen;
    char user[128];
    size_t bytes;
} WirePeer;

/* wire_recv on a ROUTER, filling *peer. */
int wire_recv_peer(void *sock, WirePeer *peer, Docmint__Envelope **env, int flags, DmErr *err);

/* A worker's routing id: WIRE_ROUTING_ID_BYTES random bytes, the first
 * not zero (libzmq's own ids start with a zero byte).  The worker keeps it
 * across reconnects, so the coordinator knows it again. */
#define WIRE_ROUTING_ID_BYTES 16
int wire_routing_id_new(unsigned char id[WIRE_ROUTING_ID_BYTES], DmErr *err);

/* Host part of a bound wildcard endpoint replaced: "tcp://0.0.0.0:5555"
 * (from ZMQ_LAST_ENDPOINT) becomes "tcp://HOST:5555" with HOST this
 * machine's name when it resolves, else its first non-loopback IPv4
 * address.  Other endpoints are copied unchanged.  *wildcard tells whether
 * the bind was on every interface (then a worker in this process may use
 * the loopback address). */
int wire_advertise_endpoint(const char *bound, char *out, size_t n, int *wildcard, DmErr *err);

/* "tcp://0.0.0.0:5555" -> "tcp://127.0.0.1:5555" (IPv6: [::1]). */
int wire_loopback_endpoint(const char *bound, char *out, size_t n);

/* Both ends of an inproc PAIR between two threads of this process, with
 * ZMQ_LINGER 0, connected before this returns: *ours bound to
 * "inproc://PREFIX-ADDR", *theirs connected to it, both made on the
 * calling thread.  Hand *theirs to the other thread when it starts
 * (pthread_create orders the two).  A thread that connected its own end
 * could start late: a message sent before would find no peer, be dropped,
 * and leave the thread waiting for it for ever. */
int wire_pipe(void *zctx, const char *prefix, void **ours, void **theirs, DmErr *err);

/* A short name for this process: "host:pid". */
void wire_process_name(char *out, size_t n);

#endif
