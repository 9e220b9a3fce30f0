/* zap_auth.c - ZAP handler accepting only the job's CURVE client key. */
#include "coordinator/zap_auth.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/wire.h"

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define ZAP_LOG_EVERY 5.0 /* seconds between refusal lines */

typedef struct ZapKey {
    char name[65];
    uint8_t key[32];
    int banned;
} ZapKey;

struct ZapAuth {
    void *zctx;
    pthread_mutex_t mu;        /* guards keys (the handler thread reads them) */
    ZapKey *keys;
    int nkeys, capkeys;
    void *ctl;                 /* main thread's end of the control pipe */
    void *thread_ctl;          /* the handler thread's end, connected */
    uint8_t key[32];           /* accepted client public key */
    char prefix[64];
    pthread_t thread;
    int started;
    atomic_uint_fast64_t refused, accepted;
    char start_error[512];     /* set by the thread when its bind fails */
};

/* Receive all frames of one request (at most 16 kept). */
typedef struct ZapFrames {
    zmq_msg_t f[16];
    int n;
} ZapFrames;

static int s_recv_frames(void *sock, ZapFrames *fr)
{
    fr->n = 0;
    int more = 1;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, 0) < 0) {
            zmq_msg_close(&m);
            for (int i = 0; i < fr->n; i++)
                zmq_msg_close(&fr->f[i]);
            fr->n = 0;
            return -1;
        }
        more = zmq_msg_more(&m);
        if (fr->n < 16)
            fr->f[fr->n++] = m;
        else
            zmq_msg_close(&m);
    }
    return 0;
}

static int s_frame_is(zmq_msg_t *m, const char *s)
{
    return zmq_msg_size(m) == strlen(s) && memcmp(zmq_msg_data(m), s, strlen(s)) == 0;
}

static void s_frame_str(zmq_msg_t *m, char *out, size_t n)
{
    size_t k = zmq_msg_size(m) < n - 1 ? zmq_msg_size(m) : n - 1;
    memcpy(out, zmq_msg_data(m), k);
    out[k] = '\0';
    for (size_t i = 0; i < k; i++)
        if ((unsigned char)out[i] < 32 || (unsigned char)out[i] > 126)
            out[i] = '?';
}

static void s_send_str(void *sock, const void *data, size_t len, int more)
{
    zmq_send(sock, data, len, more ? ZMQ_SNDMORE : 0);
}

/* Handle one ZAP request; returns 1 if it was refused (reason in why). */
static int s_handle(ZapAuth *z, void *rep, ZapFrames *fr, char *addr, size_t an, char *why,
                    size_t wn)
{
    /* Request: version, request id, domain, address, routing id, mechanism,
     * credentials...  Reply: version, request id, status code, status text,
     * user id, metadata. */
    const char *code = "400", *text = "unknown client key";
    /* The user id (the "User-Id" property of every message on the
     * connection): the job's key in Z85, or the name of a listed key, so
     * the coordinator can tell keys apart and bind leases to them. */
    char user[WIRE_KEY_CHARS + 65] = "";
    addr[0] = '\0';
    if (fr->n < 6 || !s_frame_is(&fr->f[0], "1.0")) {
        code = "500";
        text = "malformed ZAP request";
    } else {
        s_frame_str(&fr->f[3], addr, an);
        if (!s_frame_is(&fr->f[5], "CURVE")) {
            char mech[32];
            s_frame_str(&fr->f[5], mech, sizeof mech);
            snprintf(why, wn, "mechanism %s instead of CURVE", mech);
            text = "CURVE required";
        } else if (fr->n < 7 || zmq_msg_size(&fr->f[6]) != 32) {
            snprintf(why, wn, "no CURVE key");
        } else if (memcmp(zmq_msg_data(&fr->f[6]), z->key, 32) == 0) {
            code = "200";
            text = "OK";
            zmq_z85_encode(user, zmq_msg_data(&fr->f[6]), 32);
        } else {
            int k = -1, banned = 0;
            pthread_mutex_lock(&z->mu);
            for (int i = 0; i < z->nkeys && k < 0; i++)
                if (memcmp(zmq_msg_data(&fr->f[6]), z->keys[i].key, 32) == 0) {
                    k = i;
                    banned = z->keys[i].banned;
                    snprintf(user, sizeof user, "%s", z->keys[i].name);
                }
            pthread_mutex_unlock(&z->mu);
            if (k >= 0 && !banned) {
                code = "200";
                text = "OK";
            } else if (k >= 0) {
                snprintf(why, wn, "key %s was dropped", user);
                text = "key dropped";
                user[0] = '\0';
            } else {
                char z85[WIRE_KEY_CHARS + 1];
                zmq_z85_encode(z85, zmq_msg_data(&fr->f[6]), 32);
                snprintf(why, wn, "client key %.8s... is not this job's", z85);
            }
        }
    }
    if (code[0] == '5')
        snprintf(why, wn, "%s", text);
    /* Counted before the reply leaves: whoever sees the outcome on the
     * connection also sees it in the counters. */
    atomic_fetch_add(code[0] == '2' ? &z->accepted : &z->refused, 1);
    if (fr->n >= 2) {
        s_send_str(rep, "1.0", 3, 1);
        s_send_str(rep, zmq_msg_data(&fr->f[1]), zmq_msg_size(&fr->f[1]), 1);
        s_send_str(rep, code, strlen(code), 1);
        s_send_str(rep, text, strlen(text), 1);
        s_send_str(rep, user, code[0] == '2' ? strlen(user) : 0, 1);
        s_send_str(rep, "", 0, 0);
    }
    return code[0] != '2';
}

static void *s_thread(void *arg)
{
    ZapAuth *z = arg;
    void *rep = zmq_socket(z->zctx, ZMQ_REP);
    void *ctl = z->thread_ctl;
    int linger = 0;
    if (!rep) {
        snprintf(z->start_error, sizeof z->start_error, "ZAP handler: %s",
                 zmq_strerror(zmq_errno()));
        zmq_send(ctl, "E", 1, 0);
        goto out;
    }
    zmq_setsockopt(rep, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(rep, ZAP_ENDPOINT) != 0) {
        snprintf(z->start_error, sizeof z->start_error, "ZAP handler: bind %s: %s", ZAP_ENDPOINT,
                 zmq_strerror(zmq_errno()));
        zmq_send(ctl, "E", 1, 0);
        goto out;
    }
    zmq_send(ctl, "R", 1, 0);
    double last_log = -1e9;
    uint64_t unlogged = 0;
    char last_addr[64] = "", last_why[160] = "";
    for (;;) {
        zmq_pollitem_t items[2] = {{rep, 0, ZMQ_POLLIN, 0}, {ctl, 0, ZMQ_POLLIN, 0}};
        int rc = zmq_poll(items, 2, 1000);
        if (rc < 0 && zmq_errno() != EINTR)
            break;
        if (rc > 0 && (items[1].revents & ZMQ_POLLIN))
            break; /* stop */
        if (rc > 0 && (items[0].revents & ZMQ_POLLIN)) {
            ZapFrames fr;
            if (s_recv_frames(rep, &fr) != 0)
                break;
            char addr[64], why[160] = "";
            if (s_handle(z, rep, &fr, addr, sizeof addr, why, sizeof why)) {
                unlogged++;
                snprintf(last_addr, sizeof last_addr, "%s", addr[0] ? addr : "?");
                snprintf(last_why, sizeof last_why, "%s", why);
            }
            for (int i = 0; i < fr.n; i++)
                zmq_msg_close(&fr.f[i]);
        }
        double now = dm_now();
        if (unlogged && now - last_log >= ZAP_LOG_EVERY) {
            if (unlogged == 1)
                fprintf(stderr, "%s: refused a connection from %s: %s\n", z->prefix, last_addr,
                        last_why);
            else
                fprintf(stderr, "%s: refused %llu connections, the last from %s: %s\n",
                        z->prefix, (unsigned long long)unlogged, last_addr, last_why);
            unlogged = 0;
            last_log = now;
        }
    }
    if (unlogged)
        fprintf(stderr, "%s: refused %llu connection%s, the last from %s: %s\n", z->prefix,
                (unsigned long long)unlogged, unlogged == 1 ? "" : "s", last_addr, last_why);
out:
    if (rep)
        zmq_close(rep);
    if (ctl)
        zmq_close(ctl);
    return NULL;
}

int zap_start(void *zctx, const char *client_public, const char *log_prefix, ZapAuth **out,
              DmErr *err)
{
    *out = NULL;
    ZapAuth *z = calloc(1, sizeof *z);
    if (!z)
        return dm_err(err, "out of memory");
    z->zctx = zctx;
    pthread_mutex_init(&z->mu, NULL);
    snprintf(z->prefix, sizeof z->prefix, "%s", log_prefix);
    if (!wire_key_valid(client_public) || !zmq_z85_decode(z->key, client_public)) {
        free(z);
        return dm_err(err, "ZAP handler: the client key is not Z85");
    }
    if (wire_pipe(zctx, "docmint-zap-ctl", &z->ctl, &z->thread_ctl, err))
        goto fail;
    if (pthread_create(&z->thread, NULL, s_thread, z) != 0) {
        dm_err(err, "ZAP handler: cannot start a thread");
        zmq_close(z->thread_ctl);
        goto fail;
    }
    z->started = 1;
    char c = 0;
    zmq_pollitem_t it = {z->ctl, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, 10000) != 1 || zmq_recv(z->ctl, &c, 1, 0) != 1 || c != 'R') {
        dm_err(err, "%s", z->start_error[0] ? z->start_error : "ZAP handler did not start");
        goto fail;
    }
    *out = z;
    return 0;
fail:
    zap_stop(&z);
    return -1;
}

int zap_allow_file(ZapAuth *z, const char *path, DmErr *err)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return dm_err_errno(err, "worker_keys %s", path);
    char line[512];
    int ln = 0, rc = 0, n0 = z->nkeys;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        ln++;
        /* '#' is a Z85 character: only a line that starts with it is a comment */
        const char *t = line + strspn(line, " \t");
        if (*t == '#')
            continue;
        char name[128], key[128], extra[8];
        int got = sscanf(line, "%127s %127s %7s", name, key, extra);
        if (got <= 0)
            continue;
        uint8_t raw[32];
        if (got != 2)
            rc = dm_err(err, "%s:%d: expected \"NAME PUBLIC_KEY\"", path, ln);
        else if (!wire_key_name_valid(name))
            rc = dm_err(err, "%s:%d: name \"%.60s\": 1 to 64 of [A-Za-z0-9._-]", path, ln, name);
        else if (!wire_key_valid(key) || !zmq_z85_decode(raw, key))
            rc = dm_err(err, "%s:%d: \"%.60s\" is not a 40-character Z85 key", path, ln, key);
        for (int i = 0; rc == 0 && i < z->nkeys; i++)
            if (!strcmp(z->keys[i].name, name) || !memcmp(z->keys[i].key, raw, 32))
                rc = dm_err(err, "%s:%d: name %s or its key is listed twice", path, ln, name);
        if (rc == 0 && !memcmp(raw, z->key, 32))
            rc = dm_err(err, "%s:%d: %s is the job's own key", path, ln, name);
        if (rc)
            break;
        pthread_mutex_lock(&z->mu);
        if (z->nkeys == z->capkeys) {
            int cap = z->capkeys ? 2 * z->capkeys : 8;
            ZapKey *v = realloc(z->keys, (size_t)cap * sizeof *v);
            if (v) {
                z->keys = v;
                z->capkeys = cap;
            }
        }
        if (z->nkeys < z->capkeys) {
            ZapKey *k = &z->keys[z->nkeys++];
            memset(k, 0, sizeof *k);
            snprintf(k->name, sizeof k->name, "%s", name);
            memcpy(k->key, raw, 32);
        } else {
            rc = dm_err(err, "out of memory");
        }
        pthread_mutex_unlock(&z->mu);
    }
    if (rc == 0 && ferror(f))
        rc = dm_err(err, "%s: read error", path);
    fclose(f);
    if (rc == 0 && z->nkeys == n0)
        rc = dm_err(err, "worker_keys %s: no keys listed", path);
    return rc;
}

int zap_ban(ZapAuth *z, const char *user)
{
    int rc = -1;
    pthread_mutex_lock(&z->mu);
    for (int i = 0; i < z->nkeys; i++)
        if (!strcmp(z->keys[i].name, user)) {
            z->keys[i].banned = 1;
            rc = 0;
        }
    pthread_mutex_unlock(&z->mu);
    return rc;
}

uint64_t zap_refused(const ZapAuth *z) { return z ? atomic_load(&((ZapAuth *)z)->refused) : 0; }
uint64_t zap_accepted(const ZapAuth *z) { return z ? atomic_load(&((ZapAuth *)z)->accepted) : 0; }

void zap_stop(ZapAuth **pz)
{
    ZapAuth *z = *pz;
    if (!z)
        return;
    if (z->started) {
        if (z->ctl)
            zmq_send(z->ctl, "S", 1, ZMQ_DONTWAIT);
        pthread_join(z->thread, NULL);
    }
    if (z->ctl)
        zmq_close(z->ctl);
    pthread_mutex_destroy(&z->mu);
    free(z->keys);
    free(z);
    *pz = NULL;
}
